import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on a run's output directory (or a `--save` directory outside it), held for as long as the
/// run uses it.
///
/// `flock` on `<directory>/.convoy.lock`: the kernel drops the lock when the process ends however it ends
/// (kill -9 included), so a stale lock file never blocks a later run. The holder writes its pid into the file
/// so that a second run can say who holds the directory.
public final class OutputLock {
    /// The lock file's name inside the output directory; its presence also marks the directory as Convoy's.
    public static let fileName = ".convoy.lock"

    /// The locked directory.
    public let directory: String
    private let descriptor: Int32

    /// Takes the lock on `directory` (which must exist), or throws at once, naming the pid that holds it.
    public convenience init(directory: String) throws {
        try self.init(lockFile: directory + "/" + Self.fileName, directory: directory, flag: "--output")
    }

    /// Takes the lock on a checkpoint directory that lives outside the output directory (`--save`): the lock
    /// file is its sibling `.NAME.convoy.lock`, since the checkpoint directory itself is replaced by each save.
    public convenience init(checkpoint path: String) throws {
        let target = URL(fileURLWithPath: path).standardizedFileURL
        try self.init(lockFile: target.deletingLastPathComponent().path + "/.\(target.lastPathComponent)" + Self.fileName,
                      directory: path, flag: "--save")
    }

    private init(lockFile path: String, directory: String, flag: String) throws {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw ConvoyError.io("cannot create the lock file \(path): \(String(cString: strerror(errno))); choose a \(flag) directory you can write to")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            let holder = Self.readPid(descriptor)
            close(descriptor)
            if code == EWOULDBLOCK {
                throw ConvoyError.io("\(flag) \(directory) is in use by another Convoy run (pid \(holder.map(String.init) ?? "unknown")); wait for it to finish or choose another \(flag)")
            }
            throw ConvoyError.io("cannot lock \(path): \(String(cString: strerror(code)))")
        }
        // Our pid replaces the previous holder's.
        let text = "\(getpid())\n"
        _ = ftruncate(descriptor, 0)
        _ = text.withCString { pwrite(descriptor, $0, strlen($0), 0) }
        self.directory = directory
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    private static func readPid(_ descriptor: Int32) -> Int32? {
        var buffer = [CChar](repeating: 0, count: 32)
        let count = pread(descriptor, &buffer, buffer.count - 1, 0)
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
