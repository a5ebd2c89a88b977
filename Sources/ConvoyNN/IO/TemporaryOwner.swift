import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Who made a temporary file or directory, written into its name, so that a later run can tell what a dead
/// process left behind (which it may remove) from a live process's work in progress (which it leaves alone).
///
/// A tag is `<pid>-<unique>@<host>`: the pid and host of the owning process, and `unique` to keep two
/// temporaries of one process apart. Both ``AtomicFile`` and checkpoint directories use it.
public enum TemporaryOwner {
    /// This machine's name as it appears in tags (characters that could confuse a path removed).
    public static let host: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }
        return name.isEmpty ? "localhost" : name
    }()

    /// A tag for a temporary owned by process `pid` of `host` (default: this one); `unique` tells its
    /// temporaries apart.
    public static func tag(pid: Int32 = getpid(), unique: String, host: String = host) -> String { "\(pid)-\(unique)@\(host)" }

    /// The owner pid of a tag, if it was made on this host (tags without a host are taken as local).
    public static func localOwner(ofTag tag: Substring) -> Int32? {
        let digits = tag.prefix { $0.isNumber }
        guard !digits.isEmpty, tag.dropFirst(digits.count).first == "-", let pid = Int32(digits), pid > 0 else { return nil }
        if let at = tag.lastIndex(of: "@"), tag[tag.index(after: at)...] != host { return nil }
        return pid
    }

    /// Whether process `pid` is gone (a pid we may not signal still exists).
    public static func isDead(_ pid: Int32) -> Bool { kill(pid, 0) != 0 && errno == ESRCH }

    /// Whether the tag after `prefix` in `name` belongs to a process of this host that no longer exists
    /// (never this process).
    public static func ownerIsDead(name: String, prefix: String) -> Bool {
        guard name.hasPrefix(prefix), let owner = localOwner(ofTag: name.dropFirst(prefix.count)) else { return false }
        return owner != getpid() && isDead(owner)
    }
}
