import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Names of the temporary directories checkpoints are assembled in, and the clean-up of ones left behind by
/// processes that died mid-save.
///
/// A temporary for checkpoint `DIR` is the sibling `.DIR.tmp-<pid>-<unique>@<host>`: the pid and host of the
/// process that owns it (rank 0 for a sharded save), so a later save can tell a dead owner's leftovers (which
/// it removes) from a live run's work in progress (which it leaves alone), and `unique` keeps two saves of
/// one process apart.
public enum CheckpointTemporary {
    /// This machine's name as it appears in temporary names (characters that could confuse a path removed).
    public static let host: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }
        return name.isEmpty ? "localhost" : name
    }()

    /// A tag for a temporary owned by process `pid` of `host` (default: this one); `unique` tells its saves apart.
    public static func tag(pid: Int32 = getpid(), unique: String, host: String = host) -> String { "\(pid)-\(unique)@\(host)" }

    /// The owner pid of a temporary's tag, if it was made on this host (legacy tags without a host are
    /// taken as local).
    static func localOwner(ofTag tag: Substring) -> Int32? {
        let digits = tag.prefix { $0.isNumber }
        guard !digits.isEmpty, tag.dropFirst(digits.count).first == "-", let pid = Int32(digits), pid > 0 else { return nil }
        if let at = tag.lastIndex(of: "@"), tag[tag.index(after: at)...] != host { return nil }
        return pid
    }

    /// Whether process `pid` is gone (a pid we may not signal still exists).
    static func isDead(_ pid: Int32) -> Bool { kill(pid, 0) != 0 && errno == ESRCH }

    /// Removes the temporaries of checkpoint `directory` whose owner, a process of this host, no longer
    /// exists. Returns the removed paths. Only names of Convoy's pattern are considered.
    @discardableResult
    public static func removeStale(for directory: String) -> [String] {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = target.deletingLastPathComponent().path
        let prefix = ".\(target.lastPathComponent).tmp-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix(prefix) {
            guard let owner = localOwner(ofTag: name.dropFirst(prefix.count)), owner != getpid(), isDead(owner) else { continue }
            let path = parent + "/" + name
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            if (try? FileManager.default.removeItem(atPath: path)) != nil { removed.append(path) }
        }
        return removed
    }
}
