import ConvoyTensor
import Foundation

/// What the ranks of one Local group share: the rendezvous of each collective (by sequence number), the
/// mailboxes of point-to-point messages, and whether the group has failed.
final class LocalGroupState: @unchecked Sendable {
    let name: String
    let size: Int
    let worldRanks: [Int]
    let condition = NSCondition()
    private var rendezvous: [Int: LocalRendezvous] = [:]
    private var mailboxes: [MessageKey: [(arrival: Int, bytes: [UInt8])]] = [:]
    /// Counts posted messages, so a probe finds the earliest of several senders' messages first.
    private var arrivals = 0
    /// Set by the first failure; every later operation fails with it instead of hanging.
    private var brokenBecause: String?

    struct MessageKey: Hashable {
        let source: Int
        let destination: Int
        let tag: Int
    }

    /// Every group of the same Local world, so a failing rank can fail them all at once.
    let world: LocalWorldGroups

    init(name: String, size: Int, worldRanks: [Int], world: LocalWorldGroups) {
        self.name = name
        self.size = size
        self.worldRanks = worldRanks
        self.world = world
        world.register(self)
    }

    /// One collective's meeting point.
    final class LocalRendezvous {
        var descriptors: [CollectiveDescriptor?]
        var inputs: [UnsafeMutableRawPointer?]
        var outputs: [UnsafeMutableRawPointer?]
        var splitRequests: [(color: Int, key: Int, name: String?)?]
        /// Filled by the last rank to arrive at a split: the new group of each rank (nil: not a member).
        var splitResults: [(state: LocalGroupState, rank: Int)?] = []
        var arrivals = 0
        var departures = 0

        init(size: Int) {
            descriptors = Array(repeating: nil, count: size)
            inputs = Array(repeating: nil, count: size)
            outputs = Array(repeating: nil, count: size)
            splitRequests = Array(repeating: nil, count: size)
        }
    }

    /// Phase 1 of a collective: post this rank's arguments and wait until every rank has posted the same
    /// operation. Returns the rendezvous for phase 2 (the data movement).
    func arrive(
        rank: Int, sequence: Int, descriptor: CollectiveDescriptor, input: UnsafeMutableRawPointer?, output: UnsafeMutableRawPointer?,
        split: (color: Int, key: Int, name: String?)? = nil, timeout: Double
    ) throws -> LocalRendezvous {
        let label = "\(descriptor) #\(sequence) on group '\(name)' (rank \(rank) of \(size))"
        condition.lock()
        defer { condition.unlock() }
        try checkUsable(label)
        let meeting = rendezvous[sequence] ?? LocalRendezvous(size: size)
        rendezvous[sequence] = meeting
        if let (otherRank, other) = meeting.descriptors.enumerated().first(where: { $0.element != nil }).map({ ($0.offset, $0.element!) }), other != descriptor {
            let message = "operation #\(sequence) on group '\(name)': rank \(otherRank) issued \(other), rank \(rank) issued \(descriptor); every rank must issue the same collectives in the same order"
            breakGroup(CommunicationError.mismatch(message).description)
            throw CommunicationError.mismatch(message)
        }
        meeting.descriptors[rank] = descriptor
        meeting.inputs[rank] = input
        meeting.outputs[rank] = output
        meeting.splitRequests[rank] = split
        meeting.arrivals += 1
        if meeting.arrivals == size {
            if descriptor.kind == .split { resolveSplit(meeting) }
            condition.broadcast()
        }
        let deadline = Date().addingTimeInterval(timeout)
        while meeting.arrivals < size {
            try checkUsable(label)
            if !condition.wait(until: deadline) && meeting.arrivals < size {
                let missing = meeting.descriptors.indices.filter { meeting.descriptors[$0] == nil }
                let message = "\(label): ranks \(missing) did not arrive within \(timeout) s"
                breakGroup(CommunicationError.timedOut(message).description)
                throw CommunicationError.timedOut(message)
            }
        }
        return meeting
    }

    /// Phase 3: wait until every rank has finished moving data (others read and write this rank's buffers).
    func depart(rank: Int, sequence: Int, meeting: LocalRendezvous, descriptor: CollectiveDescriptor, timeout: Double) throws {
        let label = "\(descriptor) #\(sequence) on group '\(name)' (rank \(rank) of \(size))"
        condition.lock()
        defer { condition.unlock() }
        meeting.departures += 1
        if meeting.departures == size {
            rendezvous[sequence] = nil
            condition.broadcast()
            return
        }
        let deadline = Date().addingTimeInterval(timeout)
        while meeting.departures < size {
            try checkUsable(label)
            if !condition.wait(until: deadline) && meeting.departures < size {
                let message = "\(label): \(size - meeting.departures) ranks did not finish the data exchange within \(timeout) s"
                breakGroup(CommunicationError.timedOut(message).description)
                throw CommunicationError.timedOut(message)
            }
        }
    }

    private func resolveSplit(_ meeting: LocalRendezvous) {
        var results: [(state: LocalGroupState, rank: Int)?] = Array(repeating: nil, count: size)
        let requests = meeting.splitRequests.map { $0! }
        for color in Set(requests.map(\.color)).sorted() where color >= 0 {
            let members = requests.indices.filter { requests[$0].color == color }.sorted { (requests[$0].key, $0) < (requests[$1].key, $1) }
            let groupName = members.compactMap { requests[$0].name }.first ?? "\(name).split(\(color))"
            let state = LocalGroupState(name: groupName, size: members.count, worldRanks: members.map { worldRanks[$0] }, world: world)
            for (newRank, member) in members.enumerated() { results[member] = (state, newRank) }
        }
        meeting.splitResults = results
    }

    // MARK: - Point to point

    func post(_ bytes: [UInt8], from source: Int, to destination: Int, tag: Int) throws {
        condition.lock()
        defer { condition.unlock() }
        try checkUsable("send to rank \(destination) tag \(tag) on group '\(name)'")
        arrivals += 1
        mailboxes[MessageKey(source: source, destination: destination, tag: tag), default: []].append((arrivals, bytes))
        condition.broadcast()
    }

    func take(from source: Int, to destination: Int, tag: Int, sequence: Int, timeout: Double) throws -> [UInt8] {
        let label = "receive #\(sequence) from rank \(source) tag \(tag) on group '\(name)' (rank \(destination) of \(size))"
        let key = MessageKey(source: source, destination: destination, tag: tag)
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while mailboxes[key, default: []].isEmpty {
            try checkUsable(label)
            if !condition.wait(until: deadline) && mailboxes[key, default: []].isEmpty {
                let message = "\(label): rank \(source) sent nothing within \(timeout) s"
                breakGroup(CommunicationError.timedOut(message).description)
                throw CommunicationError.timedOut(message)
            }
        }
        return mailboxes[key]!.removeFirst().bytes
    }

    /// Waits until some rank has posted a message with `tag` to `destination` and returns the earliest one's
    /// sender and byte count, leaving it in the mailbox.
    func peek(to destination: Int, tag: Int, sequence: Int, timeout: Double) throws -> (source: Int, byteCount: Int) {
        let label = "probe #\(sequence) for tag \(tag) from any rank on group '\(name)' (rank \(destination) of \(size))"
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let earliest = mailboxes.filter { $0.key.destination == destination && $0.key.tag == tag && !$0.value.isEmpty }
                .min { $0.value[0].arrival < $1.value[0].arrival }
            if let earliest { return (earliest.key.source, earliest.value[0].bytes.count) }
            try checkUsable(label)
            if !condition.wait(until: deadline) && Date() >= deadline {
                let others = (0..<size).filter { $0 != destination }
                let message = "\(label): none of ranks \(others) sent a message with tag \(tag) within \(timeout) s"
                breakGroup(CommunicationError.timedOut(message).description)
                throw CommunicationError.timedOut(message)
            }
        }
    }

    // MARK: - Failure

    private func checkUsable(_ label: String) throws {
        if let brokenBecause {
            throw CommunicationError.peerFailed("\(label): group '\(name)' failed earlier: \(brokenBecause)")
        }
    }

    /// Fails the group from outside (a rank's thread ended with an error): every waiting and later operation
    /// fails with `reason` instead of waiting for the rank that is gone.
    func abort(_ reason: String) {
        condition.lock()
        breakGroup(reason)
        condition.unlock()
    }

    /// Marks the group failed and wakes every waiting rank so none hangs (called with the lock held).
    private func breakGroup(_ reason: String) {
        if brokenBecause == nil { brokenBecause = reason }
        condition.broadcast()
    }
}

/// The groups of one Local world (held weakly).
final class LocalWorldGroups: @unchecked Sendable {
    private let lock = NSLock()
    private var groups: [() -> LocalGroupState?] = []

    func register(_ group: LocalGroupState) {
        lock.lock()
        groups.append { [weak group] in group }
        lock.unlock()
    }

    /// Fails every group still alive.
    func abortAll(_ reason: String) {
        lock.lock()
        let alive = groups.compactMap { $0() }
        lock.unlock()
        for group in alive { group.abort(reason) }
    }
}
