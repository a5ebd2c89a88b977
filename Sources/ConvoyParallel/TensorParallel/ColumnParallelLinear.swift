import ConvoyComm
import ConvoyTensor
import Dispatch

/// Megatron's column-parallel linear y = x·W + b (x replicated, W and b cut along the output features) as one
/// tape node whose backward overlaps communication with compute, as Megatron does: it computes the input
/// gradient first (each rank's is one summand), starts its all-reduce over tp, computes the weight and bias
/// gradients while that runs, and only then waits. The node holds the input gradient — the all-reduce's buffer —
/// until the wait returns, so the memory the collective writes outlives it.
enum ColumnParallelLinear {
    static func apply(_ x: Tensor, weight: Tensor, bias: Tensor?, group: any ProcessGroup, meter: OverlapMeter) -> Tensor {
        let output = withNoGrad { Tensor.linear(x.detached(), weight: weight.detached(), bias: bias?.detached()) }
        let inFeatures = weight.shape[0], outFeatures = weight.shape[1]
        let input = x.detached().contiguous()
        let rows = input.count / inFeatures
        return Tensor.record(output, operation: "column-parallel linear", inputs: [x, weight] + (bias.map { [$0] } ?? [])) { gradient in
            let g = gradient.contiguous()
            let w = weight.detached().contiguous()
            var inputGradient: Tensor?
            var work: Work?
            let issued = DispatchTime.now().uptimeNanoseconds
            if x.requiresGrad {
                let dx = Tensor(uninitializedShape: x.shape)
                BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: inFeatures, k: outFeatures,
                           a: g.floatPointer, lda: outFeatures, b: w.floatPointer, ldb: outFeatures, c: dx.floatPointer, ldc: inFeatures)
                inputGradient = dx
                work = group.allReduceAsync(CommunicationBuffer(dx), operation: .sum)
            }
            let computeStart = DispatchTime.now().uptimeNanoseconds
            var weightGradient: Tensor?
            if weight.requiresGrad {
                let dw = Tensor(uninitializedShape: [inFeatures, outFeatures])
                BLAS.sgemm(transposeA: true, transposeB: false, m: inFeatures, n: outFeatures, k: rows,
                           a: input.floatPointer, lda: inFeatures, b: g.floatPointer, ldb: outFeatures, c: dw.floatPointer, ldc: outFeatures)
                weightGradient = dw
            }
            let biasGradient = bias?.requiresGrad == true ? withNoGrad { g.reshaped([rows, outFeatures]).sum(axes: [0]) } : nil
            let computeEnd = DispatchTime.now().uptimeNanoseconds
            if let work {
                try withExtendedLifetime(inputGradient) { try work.wait() }
                meter.record(communication: issued..<(work.completionTime ?? DispatchTime.now().uptimeNanoseconds), compute: computeStart..<computeEnd)
            }
            return [inputGradient, weightGradient] + (bias == nil ? [] : [biasGradient])
        }
    }
}
