import ConvoyTensor
import Foundation
import Testing

/// Compares the gradients `backward()` computes with central finite differences.
///
/// The scalar being differentiated is L = Σ op(inputs) ⊙ W, where W is a fixed random tensor of the output's
/// shape with |Wᵢ| ∈ [0.25, 1.25] and random sign. Every output element therefore contributes with its own
/// weight: a gradient that is right only for the sum of the outputs (or only up to a permutation of the
/// output) does not pass.
///
/// Choice of step and tolerances. The ops compute in Float32, so the forward itself is Float32; the checker
/// keeps everything else in Double: the weighted sum L is accumulated in Double from the Float32 outputs, and
/// the difference quotient divides by the step actually taken, `Double(x + ε) − Double(x − ε)`, not by 2ε.
/// With ε = 1e-2 the truncation error of the central difference is ε²/6·|f‴| ≈ 2e-5·|f‴|, and Float32 rounding
/// of L± contributes roughly √(outputs)·1e-7·|out| / 2ε ≲ 1e-4 for the small tensors used here. An element
/// passes when |analytic − numeric| ≤ 2e-3 + 1e-2·|numeric|: about ten times the expected noise, and far
/// below the error of real mistakes (a dropped factor 2 is off by |g|, a transposition by O(|g|), a missing
/// broadcast reduction by a factor of the broadcast extent), which the self-tests in
/// `GradientCheckSelfTests` confirm the checker catches. Inputs are chosen away from kinks and singularities
/// (relu at 0, max ties, log/sqrt/div near 0) by more than ε.
///
/// The analytic forward and backward run inside `TensorAllocator.withFreedMemoryPoisoned`: every block the
/// checking thread frees is filled with NaN and held out of reuse until the backward has run ("poisoning"). A
/// backward that reads a temporary of the forward it did not keep alive then produces NaN and fails the check
/// instead of passing by luck, whatever other tests allocate meanwhile.
struct GradientCheckReport: CustomStringConvertible {
    struct Element {
        var input: Int
        var index: Int
        var analytic: Double
        var numeric: Double
    }

    /// max over elements of |analytic − numeric| / (absoluteTolerance + relativeTolerance·|numeric|);
    /// infinite when an analytic gradient is not finite.
    var worstRatio: Double = 0
    /// The element achieving ``worstRatio``.
    var worst: Element?
    /// Elements outside the tolerance.
    var violations = 0
    /// Inputs that received no gradient at all (`grad == nil`) although they require one.
    var inputsWithoutGradient: [Int] = []
    /// Largest |numeric gradient| seen: a check whose gradients are all ~0 proves little.
    var largestNumericMagnitude: Double = 0
    var checkedElements = 0

    var passed: Bool { worstRatio <= 1 && inputsWithoutGradient.isEmpty }

    var description: String {
        var text = "\(violations) of \(checkedElements) gradient elements outside tolerance"
        if let worst {
            text += "; worst: input \(worst.input) element \(worst.index): analytic \(worst.analytic), numeric \(worst.numeric) (ratio to tolerance \(worstRatio))"
        }
        if !inputsWithoutGradient.isEmpty { text += "; inputs without a gradient: \(inputsWithoutGradient)" }
        return text
    }
}

enum GradientCheck {
    static let defaultEpsilon: Float = 1e-2
    static let defaultAbsoluteTolerance = 2e-3
    static let defaultRelativeTolerance = 1e-2

    /// Random output weights with magnitudes in [0.25, 1.25] and random signs.
    static func outputWeights(_ shape: [Int], seed: UInt64) -> Tensor {
        let u = Tensor.randomUniform(shape, low: -1, high: 1, seed: seed, stream: 0x5eed).toArray()
        return Tensor(shape: shape, values: u.map { $0 + ($0 < 0 ? -0.25 : 0.25) })
    }

    /// Runs the comparison and returns what it found (does not record issues).
    ///
    /// - Parameters:
    ///   - inputs: contiguous Float32 leaf tensors; their `requiresGrad` is set and their `grad` cleared.
    ///   - function: builds the op's output from `inputs` (only from them and from constants).
    static func compare(
        _ inputs: [Tensor],
        epsilon: Float = defaultEpsilon,
        absoluteTolerance: Double = defaultAbsoluteTolerance,
        relativeTolerance: Double = defaultRelativeTolerance,
        weightSeed: UInt64 = 1234,
        poisonFreedMemory: Bool = true,
        _ function: ([Tensor]) -> Tensor
    ) throws -> GradientCheckReport {
        for input in inputs {
            precondition(input.isContiguous && input.dtype == .float32, "gradient-check inputs must be contiguous float32 leaves")
            input.requiresGrad = true
            input.grad = nil
        }

        // Analytic gradients.
        let weights: Tensor
        func forwardAndBackward() throws -> Tensor {
            let output = function(inputs)
            let weights = outputWeights(output.shape, seed: weightSeed)
            try (output * weights).sum().backward()
            return weights
        }
        if poisonFreedMemory {
            weights = try TensorAllocator.shared.withFreedMemoryPoisoned(forwardAndBackward)
        } else {
            weights = try forwardAndBackward()
        }
        let analytic = inputs.map { $0.grad?.toArray() }

        // Numeric gradients.
        let weightValues = weights.toArray().map(Double.init)
        func weightedLoss() -> Double {
            withNoGrad {
                let values = function(inputs).toArray()
                precondition(values.count == weightValues.count, "the function's output changed shape between calls")
                var total = 0.0
                for (value, weight) in zip(values, weightValues) { total += Double(value) * weight }
                return total
            }
        }

        var report = GradientCheckReport()
        for (inputIndex, input) in inputs.enumerated() {
            if analytic[inputIndex] == nil { report.inputsWithoutGradient.append(inputIndex) }
            let gradient = analytic[inputIndex] ?? [Float](repeating: 0, count: input.count)
            let pointer = input.floatPointer
            for element in 0..<input.count {
                let original = pointer[element]
                let up = original + epsilon, down = original - epsilon
                pointer[element] = up
                let plus = weightedLoss()
                pointer[element] = down
                let minus = weightedLoss()
                pointer[element] = original
                let numeric = (plus - minus) / (Double(up) - Double(down))
                let analyticValue = Double(gradient[element])
                let allowed = absoluteTolerance + relativeTolerance * abs(numeric)
                let ratio = analyticValue.isFinite ? abs(analyticValue - numeric) / allowed : .infinity
                report.checkedElements += 1
                report.largestNumericMagnitude = max(report.largestNumericMagnitude, abs(numeric))
                if ratio > 1 { report.violations += 1 }
                if ratio > report.worstRatio || (ratio.isNaN && report.worstRatio.isFinite) {
                    report.worstRatio = ratio.isNaN ? .infinity : ratio
                    report.worst = .init(input: inputIndex, index: element, analytic: analyticValue, numeric: numeric)
                }
            }
        }
        return report
    }
}

/// Expects the analytic gradients of `function` at `inputs` to match central finite differences
/// (see ``GradientCheckReport`` for the method and tolerances).
func expectGradientsMatch(
    _ inputs: [Tensor],
    epsilon: Float = GradientCheck.defaultEpsilon,
    absoluteTolerance: Double = GradientCheck.defaultAbsoluteTolerance,
    relativeTolerance: Double = GradientCheck.defaultRelativeTolerance,
    weightSeed: UInt64 = 1234,
    _ comment: Comment? = nil,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ function: ([Tensor]) -> Tensor
) {
    let report: GradientCheckReport
    do {
        report = try GradientCheck.compare(
            inputs, epsilon: epsilon, absoluteTolerance: absoluteTolerance, relativeTolerance: relativeTolerance,
            weightSeed: weightSeed, function)
    } catch {
        Issue.record("backward failed: \(error)", sourceLocation: sourceLocation)
        return
    }
    #expect(report.passed, "\(comment.map { "\($0): " } ?? "")\(report)", sourceLocation: sourceLocation)
    // A check where every gradient is ~0 would pass for any backward that returns zeros.
    #expect(report.largestNumericMagnitude > 10 * absoluteTolerance, "numeric gradients are all ~0; the check is vacuous", sourceLocation: sourceLocation)
}

// MARK: - Test data

enum TestData {
    /// Uniform values in [low, high).
    static func uniform(_ shape: [Int], seed: UInt64, low: Float = -1, high: Float = 1) -> Tensor {
        Tensor.randomUniform(shape, low: low, high: high, seed: seed, stream: 77)
    }

    /// Values with magnitude in [minimum, maximum] and random sign: away from zero, for relu/log/div/sqrt.
    static func awayFromZero(_ shape: [Int], seed: UInt64, minimum: Float = 0.3, maximum: Float = 1.5) -> Tensor {
        let u = Tensor.randomUniform(shape, low: -1, high: 1, seed: seed, stream: 78).toArray()
        let values = u.map { v -> Float in
            let magnitude = minimum + (maximum - minimum) * abs(v)
            return v < 0 ? -magnitude : magnitude
        }
        return Tensor(shape: shape, values: values)
    }

    /// Distinct values spaced at least `spacing` apart, in a random order (for max: no ties, no near-ties).
    static func distinct(_ shape: [Int], seed: UInt64, spacing: Float = 0.1) -> Tensor {
        let n = Shape.count(shape)
        let keys = Tensor.randomUniform([n], seed: seed, stream: 79).toArray()
        let order = (0..<n).sorted { keys[$0] < keys[$1] }
        var values = [Float](repeating: 0, count: n)
        for (rank, position) in order.enumerated() { values[position] = (Float(rank) - Float(n) / 2) * spacing }
        return Tensor(shape: shape, values: values)
    }
}

// MARK: - Double references

enum Reference {
    /// Row-major [m, k] · [k, n] in Double.
    static func matmul(_ a: [Double], _ b: [Double], m: Int, k: Int, n: Int) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var total = 0.0
                for p in 0..<k { total += a[i * k + p] * b[p * n + j] }
                c[i * n + j] = total
            }
        }
        return c
    }

    /// Row-major transpose of an [rows, columns] matrix.
    static func transpose(_ a: [Double], rows: Int, columns: Int) -> [Double] {
        var t = [Double](repeating: 0, count: a.count)
        for i in 0..<rows { for j in 0..<columns { t[j * rows + i] = a[i * columns + j] } }
        return t
    }

    static func softmax(_ row: [Double]) -> [Double] {
        let maximum = row.max() ?? 0
        let exps = row.map { Foundation.exp($0 - maximum) }
        let total = exps.reduce(0, +)
        return exps.map { $0 / total }
    }

    static func gelu(_ x: Double) -> Double {
        0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
    }
}

extension Tensor {
    /// The elements as Doubles.
    var doubles: [Double] { toArray().map(Double.init) }
}

/// Expects `actual` to match `expected` elementwise within `absolute + relative·|expected|`.
func expectClose(
    _ actual: [Float], _ expected: [Double], absolute: Double = 1e-5, relative: Double = 1e-5,
    _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(actual.count == expected.count, "count \(actual.count) vs expected \(expected.count)", sourceLocation: sourceLocation)
    var worst = 0.0, worstIndex = -1
    for (index, (a, e)) in zip(actual, expected).enumerated() {
        let ratio = Double(a).isFinite ? abs(Double(a) - e) / (absolute + relative * abs(e)) : .infinity
        if ratio > worst { worst = ratio; worstIndex = index }
    }
    #expect(worst <= 1, "\(comment.map { "\($0): " } ?? "")element \(worstIndex): \(worstIndex >= 0 ? Double(actual[worstIndex]) : 0) vs expected \(worstIndex >= 0 ? expected[worstIndex] : 0)", sourceLocation: sourceLocation)
}

/// Compute pools shared by all tests, created once and never released. Tests do not create their own:
/// releasing a `ComputePool` crashes when its workers have not started yet, and a pool whose workers have
/// started is never freed (see the SOURCE BUG note in `ComputePoolLifetimeTests`).
enum TestPools {
    static let one = ComputePool(threadCount: 1)
    static let two = ComputePool(threadCount: 2)
    static let three = ComputePool(threadCount: 3)

    static func pool(threads: Int) -> ComputePool {
        switch threads {
        case 1: return one
        case 2: return two
        case 3: return three
        default: preconditionFailure("tests use pools of 1, 2 or 3 threads")
        }
    }
}
