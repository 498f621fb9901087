import Foundation
import Synchronization

/// Counts for the progress display, updated from the submit loop and the client's thread.
final class SubmitProgress: Sendable {
    struct Counts {
        var total = 0
        var done = 0
        var failed = 0
        /// Requests finished inside batches still running (from PROGRESS).
        var partial: [String: Int] = [:]
        var busy = 0
    }

    let counts = Mutex(Counts())
    let startedAt = Date()

    func render(final: Bool = false) -> String {
        let c = counts.withLock { $0 }
        let done = c.done + c.partial.values.reduce(0, +)
        let elapsed = max(Date().timeIntervalSince(startedAt), 0.001)
        let rate = Double(c.done) / elapsed
        let fraction = c.total > 0 ? min(1, Double(done) / Double(c.total)) : 0
        let width = 28
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let remaining = Double(max(0, c.total - done))
        let eta = rate > 0 ? formatDuration(remaining / rate) : "--"
        var line = "[\(bar)] \(done)/\(c.total) \(Int(fraction * 100))%  \(formatRate(rate)) req/s  ETA \(eta)  failed \(c.failed)"
        if c.busy > 0 { line += "  busy-retries \(c.busy)" }
        return final ? line.replacingOccurrences(of: "ETA \(eta)", with: "in \(formatDuration(elapsed))") : line
    }
}

func formatDuration(_ seconds: Double) -> String {
    if seconds < 60 { return String(format: "%.1fs", seconds) }
    if seconds < 3600 { return "\(Int(seconds) / 60)m\(Int(seconds) % 60)s" }
    return "\(Int(seconds) / 3600)h\(Int(seconds) % 3600 / 60)m"
}

func formatRate(_ rate: Double) -> String {
    rate >= 100 ? String(Int(rate.rounded())) : String(format: "%.1f", rate)
}

/// The width of the terminal on `descriptor`, or nil when it is not a terminal.
func terminalColumns(_ descriptor: Int32 = 1) -> Int? {
    var size = winsize()
    guard isatty(descriptor) == 1, ioctl(descriptor, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return nil }
    return Int(size.ws_col)
}

/// `lines` with each one cut to `columns` characters (nil: as they are), so a redrawn view never
/// wraps and scrolls its top off the screen.
func fitted(_ lines: [String], columns: Int?) -> String {
    guard let columns else { return lines.joined(separator: "\n") }
    return lines.map { $0.count > columns ? String($0.prefix(max(1, columns - 1))) + "…" : $0 }.joined(separator: "\n")
}

/// Redraws a progress line on a terminal, or logs one line per interval elsewhere.
final class ProgressPrinter: Sendable {
    let progress: SubmitProgress
    let terminal: Bool

    init(progress: SubmitProgress, terminal: Bool = isatty(2) == 1) {
        self.progress = progress
        self.terminal = terminal
    }

    /// Runs until cancelled.
    func run() async {
        let interval: UInt64 = terminal ? 200_000_000 : 5_000_000_000
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: interval)
            if Task.isCancelled { break }
            emit(progress.render())
        }
    }

    func emit(_ line: String) {
        let text = terminal ? "\r\u{1b}[2K" + line : "progress: " + line + "\n"
        FileHandle.standardError.write(Data(text.utf8))
    }

    func finish() {
        if terminal { emit(progress.render(final: true)); FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
