import ConvoyNN
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Names of the temporary directories checkpoints are assembled in, and the clean-up of ones left behind by
/// processes that died mid-save.
///
/// A temporary for checkpoint `DIR` is the sibling `.DIR.tmp-<tag>` (``TemporaryOwner``: the pid and host of
/// the process that owns it, rank 0 for a sharded save). ``AtomicFile``'s temporaries carry the same tag.
public enum CheckpointTemporary {
    /// This machine's name as it appears in temporary names (``TemporaryOwner/host``).
    public static var host: String { TemporaryOwner.host }

    /// A tag for a temporary owned by process `pid` of `host` (default: this one); `unique` tells its saves apart.
    public static func tag(pid: Int32 = getpid(), unique: String, host: String = TemporaryOwner.host) -> String {
        TemporaryOwner.tag(pid: pid, unique: unique, host: host)
    }

    /// Removes the temporaries of checkpoint `directory` whose owner, a process of this host, no longer
    /// exists. Returns the removed paths. Only names of Convoy's pattern are considered.
    @discardableResult
    public static func removeStale(for directory: String) -> [String] {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let prefix = ".\(target.lastPathComponent).tmp-"
        return removeStale(in: target.deletingLastPathComponent().path, directories: true) { $0.hasPrefix(prefix) ? prefix : nil }
    }

    /// Removes the temporary files ``AtomicFile`` left in `directory` (`.NAME.tmp-<tag>`) when their owner, a
    /// process of this host, died mid-write. Returns the removed paths.
    @discardableResult
    public static func removeStaleFiles(in directory: String) -> [String] {
        removeStale(in: directory, directories: false) { name in
            guard name.hasPrefix("."), let range = name.range(of: ".tmp-") else { return nil }
            return String(name[..<range.upperBound])
        }
    }

    /// Removes the entries of `parent` (directories or plain files) whose name has a Convoy temporary prefix
    /// (`prefix(name)`) followed by the tag of a dead local process.
    private static func removeStale(in parent: String, directories: Bool, prefix: (String) -> String?) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return [] }
        var removed: [String] = []
        for name in names {
            guard let prefix = prefix(name), TemporaryOwner.ownerIsDead(name: name, prefix: prefix) else { continue }
            let path = parent + "/" + name
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue == directories else { continue }
            if (try? FileManager.default.removeItem(atPath: path)) != nil { removed.append(path) }
        }
        return removed
    }
}
