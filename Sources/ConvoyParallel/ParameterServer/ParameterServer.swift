import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// One parameter server: holds its shard of every sparse table (and its chunk of the dense parameters when
/// they live on the servers) and answers workers until every worker has said stop.
///
/// The request loop probes for a request from any worker (``ProcessGroup/probeAsync(tag:dtype:)``), receives
/// it, and serves it:
/// - **pull**: the rows asked for (and the dense chunk), once the slowest worker has reached the clock the
///   staleness bound requires — until then the pull waits in a queue while other requests are served;
/// - **push**: row gradients (and the dense chunk's gradient) of one worker's step. Under BSP a step's pushes
///   are summed in worker order and applied together once all have arrived (so the update is the one-process
///   update of the global batch); otherwise each is applied on arrival, scaled by 1/W;
/// - **save**: once every worker has pushed the step to save, writes this server's rank file of a sharded
///   checkpoint (``ParameterServerCheckpoint``) into the directory named;
/// - **stop**: the worker is done; the loop ends when all are.
///
/// A worker that dies or stalls makes the probe (or a reply) fail with the backend's error naming the group,
/// the operation and the ranks, so the server never waits forever.
public final class ParameterServer {
    public let group: any ProcessGroup
    public let roles: ParameterServerRoles
    public let serverIndex: Int
    public let tables: [SparseTable]
    /// This server's chunk of the dense parameters (rows of width 1), when they live on the servers.
    public let dense: SparseTable?
    public let staleness: Staleness
    private let learningRate: @Sendable (Int) -> Float
    /// The dense parameters whose concatenation ``dense`` is a chunk of (names and shapes, for checkpoints).
    private let denseParameters: [ParameterServerCheckpoint.DenseParameter]

    /// Steps each worker has pushed (its clock).
    private var clocks: [Int]
    private var stopped = 0
    private var waitingPulls: [(worker: Int, source: Int, message: MessageBuffer)] = []
    /// Saves waiting until every worker has pushed their step: (step, directory, the asking rank).
    private var waitingSaves: [(step: Int, directory: String, source: Int)] = []
    /// BSP: the pushes of the step being gathered, by worker.
    private var gathered: [Int: MessageBuffer] = [:]
    private var statistics = ParameterServerStatistics()

    public init(group: any ProcessGroup, roles: ParameterServerRoles, tables: [SparseTable], dense: SparseTable?, staleness: Staleness,
                learningRate: @escaping @Sendable (Int) -> Float, startClock: Int = 0, denseParameters: [ParameterServerCheckpoint.DenseParameter] = []) throws {
        guard let index = roles.serverIndex(ofRank: group.rank) else {
            throw ConvoyError.invalidConfiguration("rank \(group.rank) is not a parameter server (servers: \(roles.serverRanks))")
        }
        self.group = group
        self.roles = roles
        serverIndex = index
        self.tables = tables
        self.dense = dense
        self.staleness = staleness
        self.learningRate = learningRate
        self.denseParameters = denseParameters
        clocks = Array(repeating: startClock, count: roles.workerCount)
    }

    /// Serves requests until every worker has stopped; returns what was observed.
    public func run() throws -> ParameterServerStatistics {
        while stopped < roles.workerCount {
            let found = try group.probe(tag: ParameterServerTag.request)
            let message = MessageBuffer(count: found.count)
            try group.receive(message.communicationBuffer, from: found.source, tag: ParameterServerTag.request)
            try serve(message, from: found.source)
        }
        guard waitingPulls.isEmpty && waitingSaves.isEmpty else {
            throw ConvoyError.invalidArgument("parameter server \(serverIndex): every worker stopped while \(waitingPulls.count) pulls and \(waitingSaves.count) saves still waited for their step")
        }
        statistics.tableBytes = tables.reduce(dense?.byteCount ?? 0) { $0 + $1.byteCount }
        statistics.clocks = clocks
        return statistics
    }

    private func workerIndex(_ source: Int, _ kind: String) throws -> Int {
        guard let worker = roles.workerIndex(ofRank: source) else {
            throw ConvoyError.invalidArgument("parameter server \(serverIndex) got a \(kind) request from rank \(source), which is not a worker")
        }
        return worker
    }

    private func serve(_ message: MessageBuffer, from source: Int) throws {
        var reader = MessageReader(message, sender: "rank \(source)")
        let code = try reader.integer()
        guard let kind = ParameterServerRequestKind(rawValue: code) else {
            throw ConvoyError.invalidArgument("parameter server \(serverIndex) got an unknown request kind \(code) from rank \(source)")
        }
        let worker = try workerIndex(source, "\(kind)")
        switch kind {
        case .pull:
            waitingPulls.append((worker, source, message))
            try answerReadyPulls()
        case .push:
            let clock = try reader.integer()
            guard clock == clocks[worker] else {
                throw ConvoyError.invalidArgument("parameter server \(serverIndex): worker \(worker) pushed step \(clock) but its next step is \(clocks[worker])")
            }
            if staleness.isSynchronous {
                gathered[worker] = message
                if gathered.count == roles.workerCount {
                    try applyGathered(step: clock)
                    gathered.removeAll()
                }
            } else {
                try apply(message, scale: 1 / Float(roles.workerCount), step: clock)
            }
            clocks[worker] = clock + 1
            try answerReadyPulls()
        case .save:
            let required = try reader.integer()
            let length = try reader.integer()
            let bytes = try reader.ids(length).map { UInt8(truncatingIfNeeded: $0) }
            // A periodic save may arrive while slower workers are still pushing that step: it waits for them.
            waitingSaves.append((required, String(decoding: bytes, as: UTF8.self), source))
            try answerReadyPulls()
        case .stop:
            stopped += 1
        }
    }

    /// Answers every waiting pull whose staleness bound the slowest worker now meets, in arrival order.
    private func answerReadyPulls() throws {
        let slowest = clocks.min()!
        var remaining: [(worker: Int, source: Int, message: MessageBuffer)] = []
        for pull in waitingPulls {
            var reader = MessageReader(pull.message, sender: "rank \(pull.source)")
            _ = try reader.integer()
            let clock = try reader.integer()
            let required = try reader.integer()
            guard slowest >= required else {
                remaining.append(pull)
                continue
            }
            statistics.record(worker: pull.worker, clock: clock, slowestClock: slowest)
            let wantsDense = try reader.integer() != 0
            let tableCount = try reader.integer()
            guard tableCount == tables.count else {
                throw ConvoyError.invalidArgument("rank \(pull.source) pulled from \(tableCount) tables; this server holds \(tables.count)")
            }
            var requests: [[Int32]] = []
            for table in tables {
                let ids = try reader.ids(try reader.integer())
                try table.checkOwned(ids, from: "rank \(pull.source)")
                requests.append(ids)
            }
            let denseCount = wantsDense ? (dense?.rows ?? 0) : 0
            let reply = MessageBuffer(count: 1 + zip(tables, requests).reduce(0) { $0 + $1.0.width * $1.1.count } + denseCount)
            reply.words[0] = Float(bitPattern: UInt32(bitPattern: Int32(max(0, clock - slowest))))
            var offset = 1
            for (table, ids) in zip(tables, requests) {
                table.read(ids, into: reply.words + offset)
                offset += ids.count * table.width
            }
            if denseCount > 0, let dense { (reply.words + offset).update(from: dense.values.floatPointer, count: denseCount) }
            try group.send(reply.communicationBuffer, to: pull.source, tag: ParameterServerTag.reply)
        }
        waitingPulls = remaining
        let ready = waitingSaves.filter { $0.step <= slowest }
        waitingSaves.removeAll { $0.step <= slowest }
        for save in ready { try write(save) }
    }

    /// Writes this server's rank file of a checkpoint (its table shards as row-strided pieces and its dense
    /// chunk) into the directory a worker named, and tells it whether that worked; a failure also ends the
    /// server, with its error.
    private func write(_ save: (step: Int, directory: String, source: Int)) throws {
        var failure: Error?
        do {
            var sources = ParameterServerCheckpoint.sources(tables: tables)
            if let dense {
                let total = denseParameters.reduce(0) { $0 + $1.count }
                sources += ParameterServerCheckpoint.sources(dense: denseParameters, range: ChunkLayout.range(total: total, parts: roles.serverCount, rank: serverIndex),
                                                             values: dense.values, state: dense.state)
            }
            try CheckpointShardWriter.write(sources, optimizerScalars: [:], rank: group.rank, of: group.size, into: save.directory)
        } catch { failure = error }
        let reply = MessageBuffer(count: 1)
        reply.words[0] = failure == nil ? 0 : 1
        try group.send(reply.communicationBuffer, to: save.source, tag: ParameterServerTag.reply)
        if let failure { throw failure }
    }

    /// One push's rows and dense chunk, as pointers into its message.
    private struct PushContents {
        var tables: [(ids: [Int32], gradients: UnsafeMutablePointer<Float>)] = []
        var dense: UnsafeMutablePointer<Float>?
    }

    private func contents(of message: MessageBuffer) throws -> PushContents {
        var reader = MessageReader(message, sender: "a worker")
        _ = try reader.integer()  // kind
        _ = try reader.integer()  // clock
        let hasDense = try reader.integer() != 0
        guard try reader.integer() == tables.count else {
            throw ConvoyError.invalidArgument("a push names a different number of tables than parameter server \(serverIndex) holds (\(tables.count))")
        }
        var result = PushContents()
        for table in tables {
            let ids = try reader.ids(try reader.integer())
            try table.checkOwned(ids, from: "a push")
            result.tables.append((ids, try reader.floats(ids.count * table.width)))
        }
        if hasDense, let dense { result.dense = try reader.floats(dense.rows) }
        return result
    }

    private func apply(_ message: MessageBuffer, scale: Float, step: Int) throws {
        let push = try contents(of: message)
        let rate = learningRate(step)
        for (table, rows) in zip(tables, push.tables) { table.apply(rows.ids, gradients: rows.gradients, scale: scale, learningRate: rate) }
        if let gradients = push.dense, let dense { dense.apply(Array(0..<Int32(dense.rows)), gradients: gradients, scale: scale, learningRate: rate) }
    }

    /// BSP: sums every worker's push of `step` in worker order, then applies the sum scaled by 1/W once.
    private func applyGathered(step: Int) throws {
        let pushes = try (0..<roles.workerCount).map { try contents(of: gathered[$0]!) }
        let rate = learningRate(step), scale = 1 / Float(roles.workerCount)
        for (index, table) in tables.enumerated() {
            var slot: [Int32: Int] = [:]
            var ids: [Int32] = []
            for push in pushes { for id in push.tables[index].ids where slot[id] == nil { slot[id] = ids.count; ids.append(id) } }
            var sum = [Float](repeating: 0, count: ids.count * table.width)
            for push in pushes {
                let rows = push.tables[index]
                for (i, id) in rows.ids.enumerated() {
                    let base = slot[id]! * table.width
                    for j in 0..<table.width { sum[base + j] += rows.gradients[i * table.width + j] }
                }
            }
            sum.withUnsafeBufferPointer { table.apply(ids, gradients: $0.baseAddress!, scale: scale, learningRate: rate) }
        }
        if let dense, pushes.contains(where: { $0.dense != nil }) {
            var sum = [Float](repeating: 0, count: dense.rows)
            for push in pushes { if let gradients = push.dense { for j in 0..<dense.rows { sum[j] += gradients[j] } } }
            sum.withUnsafeBufferPointer { dense.apply(Array(0..<Int32(dense.rows)), gradients: $0.baseAddress!, scale: scale, learningRate: rate) }
        }
    }
}

/// What a server observed: every pull it answered with the clocks involved (the instrumented clocks the
/// staleness tests check), the largest staleness, and the bytes its tables hold.
public struct ParameterServerStatistics: Sendable {
    public struct ServedPull: Sendable, Equatable {
        public var worker: Int
        /// The pulling worker's clock (steps it had pushed).
        public var clock: Int
        /// The slowest worker's clock when the pull was answered.
        public var slowestClock: Int
    }

    /// The first ``recordedPullLimit`` answered pulls (the maximum below covers all of them).
    public var servedPulls: [ServedPull] = []
    public static let recordedPullLimit = 1 << 20
    /// max over answered pulls of clock − slowest clock.
    public var maxStaleness = 0
    /// Bytes of table values and optimizer state on this server.
    public var tableBytes = 0
    /// Every worker's final clock.
    public var clocks: [Int] = []

    mutating func record(worker: Int, clock: Int, slowestClock: Int) {
        if servedPulls.count < Self.recordedPullLimit { servedPulls.append(ServedPull(worker: worker, clock: clock, slowestClock: slowestClock)) }
        maxStaleness = max(maxStaleness, clock - slowestClock)
    }
}
