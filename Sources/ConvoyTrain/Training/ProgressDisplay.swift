import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Shows training progress: on a terminal a live status line (step/total, loss, tokens/s, learning rate,
/// ETA) redrawn in place; otherwise one plain line every `plainEvery` steps, for logs. Only one rank (rank 0)
/// reports through it, so it is handed to rank threads but used by one.
public final class ProgressDisplay: @unchecked Sendable {
    public let isTerminal: Bool
    private let plainEvery: Int
    private var lastDraw: Double = 0
    private var lastTenth = -1

    /// `isTerminal` defaults to whether standard output is a terminal.
    public init(plainEvery: Int, isTerminal: Bool = isatty(STDOUT_FILENO) == 1) {
        self.isTerminal = isTerminal
        self.plainEvery = max(1, plainEvery)
    }

    /// Reports a finished step; `rate` is in `unit` (tokens for GPT, samples for the CTR model).
    ///
    /// - Throws: ``ConvoyError/io(_:)`` when standard output cannot be written (closed pipe, full disk).
    public func step(_ step: Int, of total: Int, loss: Double, tokensPerSecond: Double, learningRate: Double, elapsed: Double, remaining: Double,
                     unit: String = "tok/s") throws {
        let line = String(format: "step %d/%d | loss %.4f | %.0f %@ | lr %.2e | elapsed %@ | ETA %@",
                          step, total, loss, tokensPerSecond, unit, learningRate, Self.duration(elapsed), Self.duration(remaining))
        if isTerminal {
            // Redraw at most 10 times a second, and always on the last step.
            guard elapsed - lastDraw >= 0.1 || step == total else { return }
            lastDraw = elapsed
            try write("\r\u{1B}[2K" + line + (step == total ? "\n" : ""))
        } else if step % plainEvery == 0 || step == total {
            try write(line + "\n")
        }
    }

    /// Reports progress through `total` bytes (tokenising a corpus): on a terminal a bar with the share done,
    /// bytes/s and ETA, redrawn in place; otherwise a plain line at every tenth.
    public func progress(_ label: String, done: Int, total: Int, elapsed: Double) throws {
        let share = total > 0 ? Double(done) / Double(total) : 1
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let width = 30, filled = Int(share * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
        let line = String(format: "%@ [%@] %3.0f%% | %.1f MB/s | ETA %@", label, bar, share * 100, rate / 1e6,
                          Self.duration(rate > 0 ? Double(total - done) / rate : .nan))
        if isTerminal {
            guard elapsed - lastDraw >= 0.1 || done == total else { return }
            lastDraw = elapsed
            try write("\r\u{1B}[2K" + line + (done == total ? "\n" : ""))
        } else {
            let tenth = Int(share * 10)
            guard tenth > lastTenth else { return }
            lastTenth = tenth
            try write(line + "\n")
        }
    }

    /// Prints a message on its own line (clearing a live line first).
    public func message(_ text: String) throws {
        try write((isTerminal ? "\r\u{1B}[2K" : "") + text + "\n")
    }

    /// Unbuffered, so the live line and messages appear in order and at once.
    private func write(_ text: String) throws {
        try StandardOutput.write(Array(text.utf8))
    }

    /// "1h02m", "3m05s", "12s".
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let total = Int(seconds.rounded())
        if total >= 3600 { return String(format: "%dh%02dm", total / 3600, (total % 3600) / 60) }
        if total >= 60 { return String(format: "%dm%02ds", total / 60, total % 60) }
        return "\(total)s"
    }
}
