import ConvoyNN
import ConvoyTensor

/// The bf16 compute copies of parameters that are, at rest, their own fp32 master weights: every layout
/// without ZeRO (one process, DDP, pipelines, tensor parallelism). ZeRO makes its copies by gathering bf16
/// from fp32 master shards instead (``DistributedOptimizer``); both give every parameter the same compute
/// values — its master rounded to bf16 (ties to even) — so a bf16 run computes the same numbers under any
/// layout.
///
/// For the forwards and backwards of a step the parameters hold their rounded values while the fp32 masters
/// wait in one flat side buffer; ``restoreMasters()`` puts them back before the optimizer steps them. So the
/// optimizer, clipping, checkpoints (which save and resume the masters exactly), evaluation and the Hugging
/// Face export see fp32 masters, and the copies are refreshed from the updated masters at the next step.
public final class BFloat16ComputeCopies {
    private let parameters: [Parameter]
    /// The masters while the parameters hold their copies, parameter after parameter.
    private let masters: Tensor
    /// Whether the parameters hold their bf16 copies (between ``roundParameters()`` and ``restoreMasters()``).
    public private(set) var holdsCopies = false

    /// For `parameters` (a parameter listed twice, e.g. a tied weight, is rounded once).
    public init(parameters: [Parameter]) throws {
        var seen = Set<ObjectIdentifier>()
        self.parameters = parameters.filter { seen.insert(ObjectIdentifier($0)).inserted }
        for parameter in self.parameters {
            precondition(parameter.dtype == .float32 && parameter.isContiguous, "bf16 compute copies are made of contiguous float32 parameters")
        }
        let total = self.parameters.reduce(0) { $0 + $1.count }
        masters = try TensorAllocator.withCategory(.parameters) { try Tensor.zeros([total], for: "the fp32 master weights") }
    }

    /// Keeps the masters aside and rounds every parameter to bf16 in place (before a step's first forward).
    public func roundParameters() {
        guard !holdsCopies else { return }
        var offset = 0
        for parameter in parameters {
            let values = parameter.floatPointer
            (masters.floatPointer + offset).update(from: values, count: parameter.count)
            BFloat16.roundToFloat(values, to: values, count: parameter.count)
            offset += parameter.count
        }
        holdsCopies = true
    }

    /// Puts the fp32 masters back into the parameters (before the optimizer step, and whenever a step ends).
    public func restoreMasters() {
        guard holdsCopies else { return }
        var offset = 0
        for parameter in parameters {
            parameter.floatPointer.update(from: masters.floatPointer + offset, count: parameter.count)
            offset += parameter.count
        }
        holdsCopies = false
    }
}
