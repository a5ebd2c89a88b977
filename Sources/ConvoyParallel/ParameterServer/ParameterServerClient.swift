import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// A worker's side of parameter-server training: pulls the rows a batch touches (and the dense parameters
/// when they live on the servers) from the servers that hold them, pushes row gradients back, and counts the
/// bytes moved. Rows go to server id mod S (``ParameterServerRoles/server(ofRow:)``).
public final class ParameterServerClient {
    public let group: any ProcessGroup
    public let roles: ParameterServerRoles
    public let tableWidths: [Int]
    public let tableRows: [Int]
    /// Elements of the dense parameters on the servers (0: they are not on the servers).
    public let denseCount: Int
    public let staleness: Staleness
    public let workerIndex: Int
    /// Bytes of row and dense values received / gradients sent, since creation (headers and ids included).
    public private(set) var bytesPulled = 0
    public private(set) var bytesPushed = 0
    /// The largest staleness the servers reported for this worker's pulls.
    public private(set) var maxStalenessObserved = 0

    public init(group: any ProcessGroup, roles: ParameterServerRoles, tableRows: [Int], tableWidths: [Int], denseCount: Int, staleness: Staleness) throws {
        guard let worker = roles.workerIndex(ofRank: group.rank) else {
            throw ConvoyError.invalidConfiguration("rank \(group.rank) is a parameter server, not a worker")
        }
        self.group = group
        self.roles = roles
        self.tableRows = tableRows
        self.tableWidths = tableWidths
        self.denseCount = denseCount
        self.staleness = staleness
        workerIndex = worker
    }

    /// The chunk of the dense parameters server `s` holds.
    public func denseRange(server: Int) -> Range<Int> { ChunkLayout.range(total: denseCount, parts: roles.serverCount, rank: server) }

    /// Throws, naming the table and the id, unless every id is a row of its table.
    public func checkIDs(_ ids: [[Int32]]) throws {
        guard ids.count == tableRows.count else {
            throw ConvoyError.invalidArgument("a batch has ids for \(ids.count) tables; the model has \(tableRows.count)")
        }
        for (table, values) in ids.enumerated() {
            if let bad = values.first(where: { $0 < 0 || Int($0) >= tableRows[table] }) {
                throw ConvoyError.invalidArgument("id \(bad) of table \(table) is outside the table's rows 0..<\(tableRows[table]); ids must be in 0..<\(tableRows[table]) (check the data or the vocabulary sizes)")
            }
        }
    }

    /// Pulls rows `ids[t]` (distinct) of every table t, plus the dense parameters when `dense` is set, as a
    /// worker at `clock` (steps pushed). `requiredSlowestClock`: the servers answer once every worker has
    /// pushed that many steps (nil: the staleness bound's requirement for `clock`).
    public func pull(_ ids: [[Int32]], dense: Bool, clock: Int, requiredSlowestClock: Int? = nil) throws -> (rows: [Tensor], dense: [Float]?) {
        try checkIDs(ids)
        let servers = roles.serverCount
        let required = requiredSlowestClock ?? staleness.requiredSlowestClock(forClock: clock) ?? -1
        // Positions of each table's ids per server, to put the replies back in order.
        var positions = Array(repeating: Array(repeating: [Int](), count: ids.count), count: servers)
        for (table, values) in ids.enumerated() {
            for (position, id) in values.enumerated() { positions[roles.server(ofRow: id)][table].append(position) }
        }
        var replies: [(work: Work, message: MessageBuffer)] = []
        var sends: [Work] = []
        for server in 0..<servers {
            var writer = MessageWriter()
            writer.integer(ParameterServerRequestKind.pull.rawValue)
            writer.integer(clock)
            writer.integer(required)
            writer.integer(dense ? 1 : 0)
            writer.integer(ids.count)
            var replyCount = 1
            for (table, values) in ids.enumerated() {
                let mine = positions[server][table].map { values[$0] }
                writer.integer(mine.count)
                writer.ids(mine)
                replyCount += mine.count * tableWidths[table]
            }
            if dense { replyCount += denseRange(server: server).count }
            let request = MessageBuffer(writer)
            let reply = MessageBuffer(count: replyCount)
            let rank = roles.serverRanks[server]
            sends.append(group.sendAsync(request.communicationBuffer, to: rank, tag: ParameterServerTag.request))
            replies.append((group.receiveAsync(reply.communicationBuffer, from: rank, tag: ParameterServerTag.reply), reply))
            bytesPushed += request.byteCount
            bytesPulled += reply.byteCount
        }
        for work in sends { try work.wait() }
        let rows = ids.enumerated().map { table, values in Tensor.zeros([values.count, tableWidths[table]]) }
        var denseValues: [Float]? = dense ? [Float](repeating: 0, count: denseCount) : nil
        for (server, reply) in replies.enumerated() {
            try reply.work.wait()
            let words = reply.message.words
            maxStalenessObserved = max(maxStalenessObserved, Int(Int32(bitPattern: words[0].bitPattern)))
            var offset = 1
            for table in ids.indices {
                let width = tableWidths[table], destination = rows[table].floatPointer
                for position in positions[server][table] {
                    (destination + position * width).update(from: words + offset, count: width)
                    offset += width
                }
            }
            if dense {
                let range = denseRange(server: server)
                denseValues!.withUnsafeMutableBufferPointer { ($0.baseAddress! + range.lowerBound).update(from: words + offset, count: range.count) }
            }
        }
        return (rows, denseValues)
    }

    /// Pushes this worker's gradients of step `clock`: one ``SparseRowGradient`` per table and, when the dense
    /// parameters live on the servers, their flat gradient (``denseCount`` floats).
    public func push(_ gradients: [SparseRowGradient], dense: [Float]?, clock: Int) throws {
        guard gradients.count == tableRows.count else {
            throw ConvoyError.invalidArgument("a push has gradients for \(gradients.count) tables; the model has \(tableRows.count)")
        }
        try checkIDs(gradients.map(\.rows))
        var sends: [Work] = []
        for server in 0..<roles.serverCount {
            var writer = MessageWriter()
            writer.integer(ParameterServerRequestKind.push.rawValue)
            writer.integer(clock)
            writer.integer(dense == nil ? 0 : 1)
            writer.integer(gradients.count)
            for gradient in gradients {
                let mine = gradient.rows.indices.filter { roles.server(ofRow: gradient.rows[$0]) == server }
                writer.integer(mine.count)
                writer.ids(mine.map { gradient.rows[$0] })
                let values = gradient.values.contiguous(), width = gradient.width
                withExtendedLifetime(values) {
                    for index in mine { writer.floats(UnsafeBufferPointer(start: values.floatPointer + index * width, count: width)) }
                }
            }
            if let dense {
                let range = denseRange(server: server)
                dense.withUnsafeBufferPointer { writer.floats(UnsafeBufferPointer(rebasing: $0[range])) }
            }
            let message = MessageBuffer(writer)
            bytesPushed += message.byteCount
            sends.append(group.sendAsync(message.communicationBuffer, to: roles.serverRanks[server], tag: ParameterServerTag.request))
        }
        for work in sends { try work.wait() }
    }

    /// Asks every server to write its rank file of a checkpoint into `directory` once every worker has pushed
    /// `step` steps, and waits until all have.
    ///
    /// - Throws: naming the server, when one could not write (it ends with its own error).
    public func save(into directory: String, step: Int) throws {
        var replies: [(work: Work, message: MessageBuffer)] = []
        var sends: [Work] = []
        for server in 0..<roles.serverCount {
            var writer = MessageWriter()
            writer.integer(ParameterServerRequestKind.save.rawValue)
            writer.integer(step)
            let bytes = Array(directory.utf8)
            writer.integer(bytes.count)
            writer.ids(bytes.map { Int32($0) })
            let rank = roles.serverRanks[server]
            sends.append(group.sendAsync(MessageBuffer(writer).communicationBuffer, to: rank, tag: ParameterServerTag.request))
            let reply = MessageBuffer(count: 1)
            replies.append((group.receiveAsync(reply.communicationBuffer, from: rank, tag: ParameterServerTag.reply), reply))
        }
        for work in sends { try work.wait() }
        for (server, reply) in replies.enumerated() {
            try reply.work.wait()
            guard reply.message.words[0] == 0 else {
                throw ConvoyError.io("parameter server \(server) (rank \(roles.serverRanks[server])) could not write its part of the checkpoint in \(directory) (its error is reported there); the previous checkpoint is untouched")
            }
        }
    }

    /// Tells every server this worker is done.
    public func stop() throws {
        var sends: [Work] = []
        for rank in roles.serverRanks {
            var writer = MessageWriter()
            writer.integer(ParameterServerRequestKind.stop.rawValue)
            sends.append(group.sendAsync(MessageBuffer(writer).communicationBuffer, to: rank, tag: ParameterServerTag.request))
        }
        for work in sends { try work.wait() }
    }
}
