import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

/// The pieces of sparse (parameter-server) training: row initialisation independent of the sharding, the
/// row-wise optimizers' arithmetic, row-sparse gradients, and the CTR model's loss and weights.
@Suite struct SparseTableTests {
    @Test(arguments: [2, 3, 5])
    func rowsHaveTheSameValuesHoweverTheTableIsSharded(shards: Int) {
        let initializer = RowInitializer(seed: 7)
        let whole = SparseTable(table: 4, rows: 23, width: 3, optimizer: RowOptimizer(kind: .sgd), initializer: initializer)
        var seen = 0
        for shard in 0..<shards {
            let part = SparseTable(table: 4, rows: 23, width: 3, shardIndex: shard, shardCount: shards, optimizer: RowOptimizer(kind: .sgd), initializer: initializer)
            let ids = (0..<23).map(Int32.init).filter { Int($0) % shards == shard }
            #expect(part.localRows == ids.count)
            var mine = [Float](repeating: 0, count: ids.count * 3), reference = mine
            part.read(ids, into: &mine)
            whole.read(ids, into: &reference)
            #expect(mine == reference)
            seen += ids.count
        }
        #expect(seen == 23)
        // Another table of the same seed has other values.
        let other = SparseTable(table: 5, rows: 23, width: 3, optimizer: RowOptimizer(kind: .sgd), initializer: initializer)
        #expect(other.values.toArray() != whole.values.toArray())
    }

    @Test func adagradFollowsPaddlesSparseRule() {
        let rule = RowOptimizer(kind: .adagrad)
        var row: [Float] = [1, 2], state: [Float] = [0]
        let gradient: [Float] = [0.5, -1]
        rule.update(row: &row, gradient: gradient, scale: 1, state: &state, width: 2, learningRate: 0.05)
        // First step: a₀/(a₀ + 0) = 1, so w −= lr·g; then G = mean(g²) = 0.625.
        #expect(row == [1 - 0.05 * 0.5, 2 + 0.05])
        #expect(state == [0.625])
        rule.update(row: &row, gradient: gradient, scale: 1, state: &state, width: 2, learningRate: 0.05)
        let factor = Float(0.05 * (3.0 / 3.625).squareRoot())
        #expect(abs(row[0] - (1 - 0.025 - factor * 0.5)) < 1e-7 && abs(row[1] - (2 + 0.05 + factor)) < 1e-7)
    }

    @Test func lazyAdamCorrectsBiasWithTheRowsOwnStepCount() {
        let rule = RowOptimizer(kind: .adam, beta1: 0.9, beta2: 0.999)
        var row: [Float] = [0], state = [Float](repeating: 0, count: rule.stateCount(width: 1))
        // A row's first update moves it by lr·sign(g) whatever the global step is: bias correction uses t = 1.
        rule.update(row: &row, gradient: [4], scale: 0.5, state: &state, width: 1, learningRate: 0.01)
        #expect(abs(row[0] + 0.01) < 1e-6)
        #expect(state[2] == 1)
    }

    @Test func aBatchGivesOneGradientRowPerUniqueID() throws {
        let lookup = SparseLookup(ids: [5, 2, 5, 9])
        #expect(lookup.uniqueIDs == [2, 5, 9] && lookup.positions == [1, 0, 1, 2])
        let rows = Tensor(shape: [3, 2], values: [1, 2, 3, 4, 5, 6], requiresGrad: true)
        let gathered = lookup.gather(rows)
        #expect(gathered.toArray() == [3, 4, 1, 2, 3, 4, 5, 6])
        try gathered.sum().backward()
        let gradient = SparseRowGradient(rows: lookup.uniqueIDs, values: rows.grad!)
        #expect(gradient.values.shape == [3, 2] && gradient.values.toArray() == [1, 1, 2, 2, 1, 1])
    }

    @Test func logisticLossIsStableAndMatchesItsFormula() throws {
        let logits: [Float] = [-120, -2, 0, 0.5, 3, 90]
        let labels: [Float] = [0, 1, 1, 0, 1, 0]
        let loss = CTRModel.logisticLoss(logits: Tensor(shape: [6], values: logits), labels: labels).scalarValue
        var total = 0.0
        for (z, y) in zip(logits, labels) {
            let x = Double(z), softplus = max(x, 0) + log1p(exp(-abs(x)))
            total += softplus - Double(y) * x
        }
        let expected = total / 6
        #expect(loss.isFinite && abs(Double(loss) - expected) < 1e-5 * expected)
    }

    @Test func weightsRoundTripAndAnotherShapeIsRefusedUntouched() throws {
        let directory = NSTemporaryDirectory() + "convoy-ctr-weights-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = CTRConfiguration(vocabularySizes: Array(repeating: 10, count: 26), embeddingWidth: 4, hiddenWidth: 8)
        let saved = try CTRModel(configuration, seed: 1)
        try saved.saveWeights(to: directory)
        let loaded = try CTRModel(configuration, seed: 2)
        try loaded.loadWeights(from: directory)
        #expect(loaded.parameters.map { $0.toArray() } == saved.parameters.map { $0.toArray() })
        var wider = configuration
        wider.hiddenWidth = 16
        let other = try CTRModel(wider, seed: 3)
        let before = other.parameters.map { $0.toArray() }
        #expect(throws: ConvoyError.self) { try other.loadWeights(from: directory) }
        #expect(other.parameters.map { $0.toArray() } == before)
        #expect(saved.kind == "ctr")
    }
}
