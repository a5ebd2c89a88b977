/// The precision the matrix products of this thread run at: fp32, or bf16 operands with fp32 accumulation
/// and fp32 results (mixed precision, as `torch.autocast` does it).
///
/// Only the GEMMs change: ``Tensor/matmul(_:)``, ``Tensor/linear(_:weight:bias:)`` and the two GEMMs of each
/// head in ``Tensor/causalSelfAttention(qkv:heads:dropout:key:)`` round their operands to bf16 (ties to even)
/// and accumulate in fp32. Everything else — layer norm, softmax, the loss, the optimizer and the gradient
/// norm — stays fp32, and tensors stay fp32. Training in bf16 also gives every parameter a bf16 compute copy
/// of its fp32 master weight (ConvoyParallel rounds the parameters for each step, or ZeRO gathers them in
/// bf16), held as an fp32 tensor of bf16 values: rounding such a weight again at a GEMM changes nothing.
///
/// The precision is per thread (ranks of the Local backend are threads); an operation reads it when it runs
/// forward and runs its backward at the same precision whichever thread executes it.
public enum ComputePrecision {
    private static let onThread = ThreadLocal<DType> { .float32 }

    /// The precision this thread's matrix products run at (``DType/float32`` unless inside ``with(_:_:)``).
    public static var current: DType { onThread.value }

    /// Runs `body` with this thread's matrix products at `precision`, restoring the previous one afterwards.
    public static func with<Result>(_ precision: DType, _ body: () throws -> Result) rethrows -> Result {
        try onThread.withValue(precision, body)
    }
}
