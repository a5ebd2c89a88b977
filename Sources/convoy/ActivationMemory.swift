import ConvoyNN
import ConvoyTensor

/// Activation memory per transformer block, measured in the allocator: the bytes a block's forward leaves
/// allocated (what its backward will read, plus its output), against Megatron's s·b·h·(34 + 5·a·s/h).
enum ActivationMemory {
    /// One forward on the tape of `model`; the live bytes each block's forward added, in block order. The
    /// forward's tape is dropped afterwards (nothing runs backward). With `owner` (a Local rank) only that
    /// rank's storage is counted, so ranks running at once do not see each other's.
    static func perBlock(model: GPT, tokens: [Int32], batch: Int, time: Int, context: ForwardContext, owner: Int? = nil) -> [Int] {
        var before: [Int] = [], after: [Int] = []
        let allocator = TensorAllocator.shared
        let live = { owner.map { allocator.liveBytes(of: .other, owner: $0) } ?? allocator.liveBytes }
        var hooks: [(Module, Int)] = []
        for block in model.blocks {
            hooks.append((block, block.registerForwardPreHook { _ in before.append(live()) }))
            hooks.append((block, block.registerForwardPostHook { _, output in after.append(live()); return output }))
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

    /// The same accounting (Korthikanti et al. 2022, Table 2 / §4) for what Convoy stores: fp32 activations and
    /// dropout off, so the 1-byte masks and the dropped copies are absent. Per layer, in elements: the two layer
    /// norms' inputs and the two column-parallel GEMMs' inputs (4·s·b·h, whole on every rank unless sequence
    /// parallelism shards them), and within the tensor-parallel regions Q, K, V, the attention output and the
    /// MLP's GELU input and output (12·s·b·h) plus the softmax output (a·s²·b), divided by t. In bytes:
    /// s·b·h·(16 + 48/t + 4·a·s/(h·t)), or s·b·h·(64 + 4·a·s/h)/t with sequence parallelism.
    static func dropoutFreeFP32Bytes(sequence s: Int, batch b: Int, width h: Int, heads a: Int, tp t: Int, sequenceParallel: Bool) -> Double {
        let sbh = Double(s * b * h), attention = 4 * Double(a * s) / Double(h)
        return sequenceParallel ? sbh * (64 + attention) / Double(t) : sbh * (16 + (48 + attention) / Double(t))
    }
}
