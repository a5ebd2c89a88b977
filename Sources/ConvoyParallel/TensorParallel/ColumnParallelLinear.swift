import ConvoyComm
import ConvoyTensor
import Dispatch

/// Megatron's column-parallel linear y = x·W + b (x replicated, W and b cut along the output features) as one
/// tape node whose backward overlaps communication with compute, as Megatron does: it computes the input
/// gradient first (each rank's is one summand), starts its reduction over tp, computes the weight and bias
/// gradients while that runs, and only then waits. The node holds the input gradient — the collective's buffer —
/// until the wait returns, so the memory the collective writes outlives it.
///
/// Under sequence parallelism x arrives sharded along the sequence. The node all-gathers it for the forward
/// GEMM but keeps only this rank's shard; backward gathers it again (overlapped with the input-gradient GEMM)
/// for the weight gradient, and reduce-scatters the input gradient back to sequence shards (overlapped with
/// the weight-gradient GEMM). That is Megatron's trade (Korthikanti et al. 2022, §4.2.2): one more all-gather
/// per column-parallel linear in backward, for activations that are all divided by tp.
enum ColumnParallelLinear {
    /// x replicated along tp: its input gradient is all-reduced.
    static func apply(_ x: Tensor, weight: Tensor, bias: Tensor?, group: any ProcessGroup, meter: OverlapMeter) -> Tensor {
        let input = x.detached().contiguous()
        let output = withNoGrad { Tensor.linear(input, weight: weight.detached(), bias: bias?.detached()) }
        return record(output, x: x, weight: weight, bias: bias, meter: meter, name: "column-parallel linear",
                      input: { input }) { dx in
            let work = group.allReduceAsync(CommunicationBuffer(dx), operation: .sum)
            return Redistribution.PendingCollective(work: work) { dx }
        }
    }

    /// x sharded along `dim` (sequence parallelism): gathered for the GEMMs, its input gradient reduce-scattered.
    static func applySequenceSharded(_ x: Tensor, dim: Int, weight: Tensor, bias: Tensor?, group: any ProcessGroup,
                                     meter: OverlapMeter) throws -> Tensor {
        let shard = x.detached().contiguous()
        let output = try withNoGrad {
            let gathered = try Redistribution.gather(shard, dim: dim, group: group)
            return Tensor.linear(gathered, weight: weight.detached(), bias: bias?.detached())
        }
        var pendingInput: Redistribution.PendingCollective?
        return record(output, x: x, weight: weight, bias: bias, meter: meter, name: "column-parallel linear (sequence-parallel input)",
                      beforeInputGradient: { pendingInput = Redistribution.startGather(shard, dim: dim, group: group) },
                      input: { try pendingInput!.finish() }) { dx in
            Redistribution.startScatter(dx, dim: dim, group: group)
        }
    }

    /// The tape node both forms share. Backward: `beforeInputGradient` (start fetching the input), the input
    /// gradient g·Wᵀ for the whole input, `input()` (the whole input, for the weight gradient), `reduce(dx)`
    /// started, the weight and bias gradients while it runs, then its result.
    private static func record(_ output: Tensor, x: Tensor, weight: Tensor, bias: Tensor?, meter: OverlapMeter, name: String,
                               beforeInputGradient: @escaping () -> Void = {}, input: @escaping () throws -> Tensor,
                               reduce: @escaping (Tensor) -> Redistribution.PendingCollective) -> Tensor {
        let inFeatures = weight.shape[0], outFeatures = weight.shape[1]
        let rows = output.count / outFeatures
        var wholeShape = output.shape
        wholeShape[wholeShape.count - 1] = inFeatures
        return Tensor.record(output, operation: name, inputs: [x, weight] + (bias.map { [$0] } ?? [])) { gradient in
            beforeInputGradient()
            let g = gradient.contiguous()
            let w = weight.detached().contiguous()
            var pending: Redistribution.PendingCollective?
            var issued: UInt64 = 0
            if x.requiresGrad {
                let dx = Tensor(uninitializedShape: wholeShape)
                BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: inFeatures, k: outFeatures,
                           a: g.floatPointer, lda: outFeatures, b: w.floatPointer, ldb: outFeatures, c: dx.floatPointer, ldc: inFeatures)
                issued = DispatchTime.now().uptimeNanoseconds
                pending = reduce(dx)
            }
            let whole = try input()
            let computeStart = DispatchTime.now().uptimeNanoseconds
            var weightGradient: Tensor?
            if weight.requiresGrad {
                let dw = Tensor(uninitializedShape: [inFeatures, outFeatures])
                BLAS.sgemm(transposeA: true, transposeB: false, m: inFeatures, n: outFeatures, k: rows,
                           a: whole.floatPointer, lda: inFeatures, b: g.floatPointer, ldb: outFeatures, c: dw.floatPointer, ldc: outFeatures)
                weightGradient = dw
            }
            let biasGradient = bias?.requiresGrad == true ? withNoGrad { g.reshaped([rows, outFeatures]).sum(axes: [0]) } : nil
            let computeEnd = DispatchTime.now().uptimeNanoseconds
            var inputGradient: Tensor?
            if let pending {
                inputGradient = try pending.finish()
                meter.record(communication: issued..<(pending.work.completionTime ?? DispatchTime.now().uptimeNanoseconds), compute: computeStart..<computeEnd)
            }
            return [inputGradient, weightGradient] + (bias == nil ? [] : [biasGradient])
        }
    }
}
