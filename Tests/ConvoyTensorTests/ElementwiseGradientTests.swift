import ConvoyTensor
import Foundation
import Testing

/// Tensor-tensor arithmetic under broadcasting, tensor-scalar arithmetic and the unary functions.
@Suite struct ElementwiseGradientTests {
    enum BinaryOperation: String, CaseIterable, Sendable {
        case add, subtract, multiply, divide

        func apply(_ a: Tensor, _ b: Tensor) -> Tensor {
            switch self {
            case .add: return a + b
            case .subtract: return a - b
            case .multiply: return a * b
            case .divide: return a / b
            }
        }

        func reference(_ a: Double, _ b: Double) -> Double {
            switch self {
            case .add: return a + b
            case .subtract: return a - b
            case .multiply: return a * b
            case .divide: return a / b
            }
        }
    }

    struct BroadcastCase: Sendable, CustomTestStringConvertible {
        var lhs: [Int]
        var rhs: [Int]
        var testDescription: String { "\(lhs) ∘ \(rhs)" }
    }

    static let broadcastCases: [BroadcastCase] = [
        .init(lhs: [2, 3], rhs: [2, 3]),        // same shape
        .init(lhs: [2, 3], rhs: [1, 1]),        // scalar-like
        .init(lhs: [2, 3], rhs: []),            // rank-0 scalar
        .init(lhs: [2, 3], rhs: [1]),
        .init(lhs: [2, 3], rhs: [3]),           // row
        .init(lhs: [2, 3], rhs: [1, 3]),        // row, explicit leading 1
        .init(lhs: [2, 3], rhs: [2, 1]),        // column
        .init(lhs: [2, 1, 3], rhs: [4, 1]),     // both broadcast: [2, 4, 3]
        .init(lhs: [4, 1], rhs: [2, 1, 3]),     // the same, operands swapped
        .init(lhs: [3], rhs: [2, 3]),           // left operand broadcast
        .init(lhs: [1, 1], rhs: [2, 3]),
        .init(lhs: [2, 3, 4], rhs: [3, 4]),     // row spanning two axes
        .init(lhs: [2, 3, 4], rhs: [1, 1, 4]),
        .init(lhs: [2, 3, 4], rhs: [3, 1]),     // column inside a 3-D tensor
        .init(lhs: [2, 3, 4], rhs: [2, 1, 4]),  // middle axis
    ]

    /// Operands away from zero so that division is well conditioned.
    static func operands(_ c: BroadcastCase) -> (Tensor, Tensor) {
        (TestData.awayFromZero(c.lhs, seed: 11, minimum: 0.5, maximum: 1.5),
         TestData.awayFromZero(c.rhs, seed: 12, minimum: 0.5, maximum: 1.5))
    }

    @Test(arguments: BinaryOperation.allCases, broadcastCases)
    func binaryGradient(_ operation: BinaryOperation, _ c: BroadcastCase) {
        let (a, b) = Self.operands(c)
        expectGradientsMatch([a, b]) { operation.apply($0[0], $0[1]) }
    }

    @Test(arguments: BinaryOperation.allCases, broadcastCases)
    func binaryForward(_ operation: BinaryOperation, _ c: BroadcastCase) {
        let (a, b) = Self.operands(c)
        let result = operation.apply(a, b)
        let expected = Reference.broadcastBinary(a.doubles, c.lhs, b.doubles, c.rhs, operation.reference)
        #expect(result.shape == expected.shape)
        expectClose(result.toArray(), expected.values, absolute: 1e-6, relative: 1e-6)
    }

    @Test(arguments: BinaryOperation.allCases)
    func binaryGradientWithOnlyOneOperandRequiringGradient(_ operation: BinaryOperation) {
        let constant = TestData.awayFromZero([2, 1, 3], seed: 13, minimum: 0.5)
        expectGradientsMatch([TestData.awayFromZero([4, 1], seed: 14, minimum: 0.5)], "right operand") { operation.apply(constant, $0[0]) }
        expectGradientsMatch([TestData.awayFromZero([4, 1], seed: 14, minimum: 0.5)], "left operand") { operation.apply($0[0], constant) }
    }

    @Test func binaryOperandsMayBeNonContiguousViews() {
        let b = TestData.uniform([3], seed: 15)
        expectGradientsMatch([TestData.awayFromZero([3, 2], seed: 16, minimum: 0.5)]) { inputs in
            inputs[0].transposed() / b.reshaped([1, 3]).broadcast(to: [2, 3]).transposed().transposed()
        }
    }

    @Test func sameTensorOnBothSides() {
        expectGradientsMatch([TestData.awayFromZero([2, 3], seed: 17)]) { $0[0] * $0[0] }
        expectGradientsMatch([TestData.awayFromZero([2, 3], seed: 17)]) { $0[0] / ($0[0] + 3) }
    }

    // MARK: Scalar arithmetic

    enum ScalarOperation: String, CaseIterable, Sendable {
        case plusScalar, scalarPlus, minusScalar, scalarMinus, timesScalar, scalarTimes, dividedByScalar, negated

        func apply(_ x: Tensor) -> Tensor {
            switch self {
            case .plusScalar: return x + 2.5
            case .scalarPlus: return 2.5 + x
            case .minusScalar: return x - 2.5
            case .scalarMinus: return 2.5 - x
            case .timesScalar: return x * -1.75
            case .scalarTimes: return -1.75 * x
            case .dividedByScalar: return x / 4
            case .negated: return -x
            }
        }

        func reference(_ x: Double) -> Double {
            switch self {
            case .plusScalar, .scalarPlus: return x + 2.5
            case .minusScalar: return x - 2.5
            case .scalarMinus: return 2.5 - x
            case .timesScalar, .scalarTimes: return x * -1.75
            case .dividedByScalar: return x / 4
            case .negated: return -x
            }
        }
    }

    @Test(arguments: ScalarOperation.allCases)
    func scalarArithmetic(_ operation: ScalarOperation) {
        let x = TestData.uniform([3, 5], seed: 21)
        expectClose(operation.apply(x).toArray(), x.doubles.map(operation.reference), absolute: 1e-6, relative: 1e-6)
        expectGradientsMatch([TestData.uniform([3, 5], seed: 21)]) { operation.apply($0[0]) }
    }

    // MARK: Unary functions

    enum UnaryOperation: String, CaseIterable, Sendable {
        case exp, log, sqrt, squared, tanh, relu, gelu

        func apply(_ x: Tensor) -> Tensor {
            switch self {
            case .exp: return x.exp()
            case .log: return x.log()
            case .sqrt: return x.sqrt()
            case .squared: return x.squared()
            case .tanh: return x.tanh()
            case .relu: return x.relu()
            case .gelu: return x.gelu()
            }
        }

        func reference(_ x: Double) -> Double {
            switch self {
            case .exp: return Foundation.exp(x)
            case .log: return Foundation.log(x)
            case .sqrt: return x.squareRoot()
            case .squared: return x * x
            case .tanh: return Foundation.tanh(x)
            case .relu: return max(x, 0)
            case .gelu: return Reference.gelu(x)
            }
        }

        /// Inputs where the function is smooth: positive for log and sqrt, away from 0 for relu. 37
        /// elements exercise both the 8-wide SIMD loop and its scalar tail.
        var input: Tensor {
            switch self {
            case .log, .sqrt: return TestData.uniform([37], seed: 31, low: 0.3, high: 3)
            case .relu: return TestData.awayFromZero([37], seed: 32, minimum: 0.1, maximum: 2)
            case .exp: return TestData.uniform([37], seed: 33, low: -3, high: 3)
            default: return TestData.uniform([37], seed: 34, low: -3, high: 3)
            }
        }
    }

    @Test(arguments: UnaryOperation.allCases)
    func unaryGradient(_ operation: UnaryOperation) {
        expectGradientsMatch([operation.input]) { operation.apply($0[0]) }
    }

    @Test(arguments: UnaryOperation.allCases)
    func unaryGradientOfANonContiguousView(_ operation: UnaryOperation) {
        let x = operation.input.toArray()
        expectGradientsMatch([Tensor(shape: [4, 9], values: Array(x.prefix(36)))]) { operation.apply($0[0].transposed()) }
    }

    @Test(arguments: UnaryOperation.allCases)
    func unaryForward(_ operation: UnaryOperation) {
        let x = operation.input
        expectClose(operation.apply(x).toArray(), x.doubles.map(operation.reference), absolute: 1e-6, relative: 2e-6)
    }

    @Test func geluMatchesTheTanhFormulaOverAWideRange() {
        let values = stride(from: -8.0, through: 8.0, by: 0.0625).map { Float($0) }
        let x = Tensor(shape: [values.count], values: values)
        expectClose(x.gelu().toArray(), values.map { Reference.gelu(Double($0)) }, absolute: 2e-6, relative: 2e-6)
        // GPT-2's gelu_new at a few points (tanh approximation, not the erf form).
        let known = Tensor(shape: [3], values: [1, -1, 2]).gelu().toArray()
        expectClose(known, [0.8411919906082768, -0.15880800939172324, 1.954597694087775], absolute: 1e-6, relative: 1e-6)
    }

    @Test func tanhSaturatesWithoutNaN() {
        let x = Tensor(shape: [6], values: [-100, -20, -9, 9, 20, 100])
        expectClose(x.tanh().toArray(), [-1, -1, Foundation.tanh(-9), Foundation.tanh(9), 1, 1], absolute: 1e-6, relative: 0)
        expectClose(x.gelu().toArray(), [0, 0, Reference.gelu(-9), 9, 20, 100], absolute: 1e-5, relative: 1e-6)
    }
}
