/// A module that is a sequence of repeated layers (GPT-2's `h`): the natural units for gathering ZeRO-3
/// parameters layer by layer and for cutting a model into pipeline stages.
public protocol LayerSequence: Module {
    /// The layers, in forward order.
    var layers: [Module] { get }
}

/// An ordered list of modules named "0", "1", … (GPT-2's `h`).
public final class ModuleList<Element: Module>: Module, LayerSequence {
    public let elements: [Element]

    public init(_ elements: [Element]) { self.elements = elements }

    public override var children: [(name: String, module: Module)] {
        elements.enumerated().map { (String($0.offset), $0.element as Module) }
    }

    public var layers: [Module] { elements }
}
