import ConvoyNN
import ConvoyTensor

/// Activation memory per transformer block, measured in the allocator: the bytes a block's forward leaves
/// allocated (what its backward will read, plus its output), against Megatron's s·b·h·(34 + 5·a·s/h).
enum ActivationMemory {
    /// One forward on the tape of `model`; the live bytes each block's forward added, in block order. The
    /// forward's tape is dropped afterwards (nothing runs backward).
    static func perBlock(model: GPT, tokens: [Int32], batch: Int, time: Int, context: ForwardContext) -> [Int] {
        var before: [Int] = [], after: [Int] = []
        let allocator = TensorAllocator.shared
        var hooks: [(Module, Int)] = []
        for block in model.blocks {
            hooks.append((block, block.registerForwardPreHook { _ in before.append(allocator.liveBytes) }))
            hooks.append((block, block.registerForwardPostHook { _, output in after.append(allocator.liveBytes); return output }))
        }
        defer { for (module, id) in hooks { module.removeForwardHook(id) } }
        let loss = model.loss(tokens, targets: tokens, batch: batch, time: time, context: context)
        withExtendedLifetime(loss) {}
        return zip(before, after).map { $1 - $0 }
    }

    /// Megatron's activation bytes per layer, s·b·h·(34 + 5·a·s/h): 16-bit activations, 1-byte dropout masks,
    /// no tensor or sequence parallelism.
    static func megatronBytes(sequence s: Int, batch b: Int, width h: Int, heads a: Int) -> Double {
        Double(s * b * h) * (34 + 5 * Double(a * s) / Double(h))
    }
}
