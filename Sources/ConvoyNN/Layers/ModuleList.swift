/// An ordered list of modules named "0", "1", … (GPT-2's `h`).
public final class ModuleList<Element: Module>: Module {
    public let elements: [Element]

    public init(_ elements: [Element]) { self.elements = elements }

    public override var children: [(name: String, module: Module)] {
        elements.enumerated().map { (String($0.offset), $0.element as Module) }
    }
}
