import ConvoyComm
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the ranks of a run establish together at start-up, before any compute: that they all resolved the
/// same configuration, and an identity of the run (rank 0's pid and host and a random nonce) that names the
/// temporaries of sharded checkpoints, so that two runs never share one.
///
/// Ranks started with different flags or config files would otherwise train different replicas without an
/// error. Each rank all-gathers a hash of its effective configuration; only when the hashes differ do they
/// exchange the configuration text, so that the error can name the first key that differs and the ranks.
public struct RunAgreement: Sendable {
    /// Rank 0's process id (the owner of a sharded checkpoint's temporary directory).
    public let leaderPid: Int32
    /// A random number drawn by rank 0, the same on every rank.
    public let nonce: UInt32
    /// Rank 0's host name as temporary names carry it (``CheckpointTemporary``): the ranks of a sharded save
    /// on other hosts must name rank 0's temporary directory, not one of their own host.
    public let leaderHost: String

    /// Keys that may differ between ranks: they choose local resources, not what is trained.
    static let perRankKeys: Set<String> = ["training.threads"]

    /// The identity of a run of one process.
    public init() {
        leaderPid = getpid()
        nonce = UInt32.random(in: 0...UInt32.max)
        leaderHost = CheckpointTemporary.host
    }

    private init(leaderPid: Int32, nonce: UInt32, leaderHost: String) {
        self.leaderPid = leaderPid
        self.nonce = nonce
        self.leaderHost = leaderHost
    }

    /// The most bytes of a host name carried (Linux's HOST_NAME_MAX).
    static let hostBytes = 64

    /// The tag of this run's sharded checkpoint temporary after `step` (the same on every rank).
    public func shardedTemporaryTag(step: Int) -> String {
        CheckpointTemporary.tag(pid: leaderPid, unique: "sharded-\(nonce)-step\(step)", host: leaderHost)
    }

    /// Agrees on the configuration over `group` (collective; nothing to do without a group of 2 or more).
    ///
    /// - Throws: ``ConvoyError/invalidConfiguration(_:)`` naming the first differing key, its values and the
    ///   ranks, when the ranks' configurations differ.
    public static func establish(_ configuration: TrainingConfiguration, group: (any ProcessGroup)?) throws -> RunAgreement {
        let mine = RunAgreement()
        guard let group, group.size > 1 else { return mine }
        let text = comparedText(configuration)
        // FNV-1a (streamID): the same in every process, unlike Swift's per-process seeded Hasher.
        // Each rank's record: the hash, pid and nonce as 16-bit pieces, which Float32 carries exactly, then
        // the host name's bytes (zero-padded).
        let host = Array(mine.leaderHost.utf8.prefix(Self.hostBytes))
        let record = pieces(PhiloxRandom.streamID(text), count: 4) + pieces(UInt64(UInt32(bitPattern: mine.leaderPid)), count: 2) + pieces(UInt64(mine.nonce), count: 2)
            + host.map(Float.init) + [Float](repeating: 0, count: Self.hostBytes - host.count)
        let records = try allGather(record, group: group)
        let hashes = (0..<group.size).map { join(records[$0 * record.count..<$0 * record.count + 4]) }
        let leader = records[0..<record.count]
        let leaderHost = String(decoding: leader.dropFirst(8).prefix { $0 != 0 }.map { UInt8($0) }, as: UTF8.self)
        let agreement = RunAgreement(leaderPid: Int32(bitPattern: UInt32(join(leader[4..<6]))), nonce: UInt32(join(leader[6..<8])), leaderHost: leaderHost)
        guard Set(hashes).count > 1 else { return agreement }

        // They differ: exchange the texts (lengths first, then the bytes padded to the longest).
        let bytes = Array(text.utf8)
        let lengths = try allGather([Float(bytes.count)], group: group).map { Int($0) }
        let longest = lengths.max() ?? 0
        let padded = bytes.map(Float.init) + [Float](repeating: 0, count: longest - bytes.count)
        let all = try allGather(padded, group: group)
        let texts = (0..<group.size).map { rank in
            String(decoding: all[rank * longest..<rank * longest + lengths[rank]].map { UInt8($0) }, as: UTF8.self)
        }
        throw ConvoyError.invalidConfiguration(difference(texts: texts))
    }

    /// The configuration text every rank must agree on.
    static func comparedText(_ configuration: TrainingConfiguration) -> String {
        var copy = configuration
        copy.threads = nil
        return TrainingSettings.tomlText(copy)
    }

    /// The message for ranks whose configuration texts differ: the first key (in rank 0's order) on which
    /// some rank differs from rank 0, and which ranks have which value.
    static func difference(texts: [String]) -> String {
        let tables = texts.map(keyedLines)
        let keys = tables[0].map(\.key) + tables.dropFirst().flatMap { $0.map(\.key) }
        var seen = Set<String>()
        for key in keys where seen.insert(key).inserted && !perRankKeys.contains(key) {
            let values = tables.map { table in table.first { $0.key == key }?.value ?? "(not set)" }
            guard Set(values).count > 1 else { continue }
            var groups: [(value: String, ranks: [Int])] = []
            for (rank, value) in values.enumerated() {
                if let index = groups.firstIndex(where: { $0.value == value }) { groups[index].ranks.append(rank) } else { groups.append((value, [rank])) }
            }
            let described = groups.map { "\($0.ranks.count == 1 ? "rank" : "ranks") \($0.ranks.map(String.init).joined(separator: ",")) \($0.ranks.count == 1 ? "has" : "have") \(key) = \($0.value)" }
            return "the ranks were started with different configurations: \(described.joined(separator: "; ")). Start every rank with the same flags and config file"
        }
        return "the ranks were started with different configurations; start every rank with the same flags and config file"
    }

    /// `section.key` → value for each `key = value` line of a TOML text written by ``TrainingSettings/tomlText(_:)``.
    private static func keyedLines(_ text: String) -> [(key: String, value: String)] {
        var section = ""
        var result: [(key: String, value: String)] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("[") && line.hasSuffix("]") { section = String(line.dropFirst().dropLast()); continue }
            guard let equals = line.range(of: " = ") else { continue }
            result.append((section + "." + line[..<equals.lowerBound], String(line[equals.upperBound...])))
        }
        return result
    }

    private static func pieces(_ value: UInt64, count: Int) -> [Float] {
        (0..<count).map { Float((value >> (16 * UInt64($0))) & 0xffff) }
    }

    private static func join(_ pieces: ArraySlice<Float>) -> UInt64 {
        pieces.enumerated().reduce(0) { $0 | (UInt64($1.element) << (16 * UInt64($1.offset))) }
    }

    /// Every rank's `values` (the same count on every rank), rank after rank.
    private static func allGather(_ values: [Float], group: any ProcessGroup) throws -> [Float] {
        let input = Tensor(shape: [values.count], values: values)
        let output = Tensor(shape: [values.count * group.size], values: [Float](repeating: 0, count: values.count * group.size))
        try group.allGather(input: CommunicationBuffer(input), output: CommunicationBuffer(output))
        return output.toArray()
    }
}
