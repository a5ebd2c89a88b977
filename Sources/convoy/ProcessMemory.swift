import Foundation

/// Memory figures of this process from /proc.
enum ProcessMemory {
    /// Peak resident set size (VmHWM) in bytes, or 0 where /proc is unavailable.
    static func peakResidentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let digits = line.split(separator: " ").compactMap { Int($0) }
            if let kib = digits.first { return kib * 1024 }
        }
        return 0
    }
}
