import ConvoyTensor

/// A trainable parameter: a leaf tensor that requires gradients. Its ``Tensor/name`` is the stable
/// hierarchical name the module tree gives it (e.g. `h.0.attn.c_attn.weight`).
public typealias Parameter = Tensor

/// A building block of a model: it owns parameters and child modules under stable names.
///
/// Names and order are stable: parameters come depth-first in declaration order, children after the
/// module's own parameters, so every rank enumerates them identically (data parallelism builds its buckets
/// and ZeRO its shards from this order). A parameter reachable under two names (a tied weight) is listed
/// once, under the first name.
open class Module {
    /// Whether the module is in training mode (dropout active).
    public private(set) var isTraining = true
    private var forwardPreHooks: [(id: Int, body: (Module) -> Void)] = []
    private var forwardPostHooks: [(id: Int, body: (Module, Tensor) -> Tensor)] = []
    private var nextHookID = 0

    public init() {}

    /// This module's own parameters with their local names, in declaration order.
    open var localParameters: [(name: String, parameter: Parameter)] { [] }

    /// This module's own buffers (non-trainable state saved with the model) with local names.
    open var localBuffers: [(name: String, buffer: Tensor)] { [] }

    /// Child modules with their local names, in declaration order.
    open var children: [(name: String, module: Module)] { [] }

    /// Every parameter of the tree with its full dotted name, each parameter once.
    public final func namedParameters() -> [(name: String, parameter: Parameter)] {
        var seen = Set<ObjectIdentifier>()
        var result: [(String, Parameter)] = []
        visit(prefix: "") { prefix, module in
            for (name, parameter) in module.localParameters where seen.insert(ObjectIdentifier(parameter)).inserted {
                result.append((prefix + name, parameter))
            }
        }
        return result
    }

    /// Every buffer of the tree with its full dotted name.
    public final func namedBuffers() -> [(name: String, buffer: Tensor)] {
        var result: [(String, Tensor)] = []
        visit(prefix: "") { prefix, module in
            for (name, buffer) in module.localBuffers { result.append((prefix + name, buffer)) }
        }
        return result
    }

    /// Every parameter of the tree, each once, in stable order.
    public final var parameters: [Parameter] { namedParameters().map(\.parameter) }

    /// Total number of parameter elements.
    public final var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Sets training mode on this module and all its descendants.
    public final func train(_ training: Bool = true) {
        visit(prefix: "") { _, module in module.isTraining = training }
    }

    /// Evaluation mode (dropout off).
    public final func eval() { train(false) }

    /// Clears the gradients of every parameter.
    public final func zeroGradients() {
        for parameter in parameters { parameter.grad = nil }
    }

    /// Writes each parameter's full name into its ``Tensor/name`` (called once the tree is built).
    public final func assignParameterNames() {
        for (name, parameter) in namedParameters() { parameter.name = name }
    }

    /// This module and all its descendants, depth-first in declaration order.
    public final var allModules: [Module] {
        var result: [Module] = []
        visit(prefix: "") { _, module in result.append(module) }
        return result
    }

    /// Registers `hook` to run at the start of this module's forward (every layer's forward runs through
    /// ``forward(_:)``). ZeRO uses it to wait for a layer's parameters to be gathered just
    /// before the layer needs them.
    @discardableResult
    public final func registerForwardPreHook(_ hook: @escaping (Module) -> Void) -> Int {
        nextHookID += 1
        forwardPreHooks.append((nextHookID, hook))
        return nextHookID
    }

    /// Registers `hook` to run on the output of this module's forward; what it returns replaces the output
    /// (every layer's forward runs through ``forward(_:)``). ZeRO stage 3
    /// uses it to release a layer's gathered parameters after its forward and to put an identity node on the
    /// tape whose backward gathers them again just before the layer's backward.
    @discardableResult
    public final func registerForwardPostHook(_ hook: @escaping (Module, Tensor) -> Tensor) -> Int {
        nextHookID += 1
        forwardPostHooks.append((nextHookID, hook))
        return nextHookID
    }

    /// Removes a hook registered with ``registerForwardPreHook(_:)`` or ``registerForwardPostHook(_:)``.
    public final func removeForwardHook(_ id: Int) {
        forwardPreHooks.removeAll { $0.id == id }
        forwardPostHooks.removeAll { $0.id == id }
    }

    /// Runs `body` — a module's forward — between its forward pre-hooks and post-hooks. Every layer's
    /// `callAsFunction` goes through here, so hooks registered on any module run, without each layer opting in.
    public final func forward(_ body: () -> Tensor) -> Tensor {
        runForwardPreHooks()
        return runForwardPostHooks(body())
    }

    /// Runs the forward pre-hooks (called by ``forward(_:)`` at the start of a module's forward).
    public final func runForwardPreHooks() {
        for hook in forwardPreHooks { hook.body(self) }
    }

    /// Runs the forward post-hooks on `output` in registration order and returns what the last one returns
    /// (called by modules at the end of their forward).
    public final func runForwardPostHooks(_ output: Tensor) -> Tensor {
        forwardPostHooks.reduce(output) { $1.body(self, $0) }
    }

    private func visit(prefix: String, _ body: (String, Module) -> Void) {
        body(prefix, self)
        for (name, child) in children { child.visit(prefix: prefix + name + ".", body) }
    }
}

/// How parameters are initialised: deterministically from (seed, parameter name), so that every rank and
/// every process builds bit-identical weights regardless of construction order.
public struct Initializer: Sendable {
    /// The run's seed.
    public var seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    /// N(0, std²) values for the parameter `name`.
    public func normal(_ shape: [Int], std: Float, name: String) -> Parameter {
        TensorAllocator.withCategory(.parameters) {
            Tensor.randomNormal(shape, std: std, seed: seed, stream: PhiloxRandom.streamID(name), requiresGrad: true)
        }
    }

    /// A parameter filled with `value`.
    public func constant(_ shape: [Int], value: Float) -> Parameter {
        TensorAllocator.withCategory(.parameters) { Tensor.full(shape, value: value, requiresGrad: true) }
    }
}
