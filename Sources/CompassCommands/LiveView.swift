import CompassLauncher
import CompassSystem
import DequeModule
import Foundation
import Logging

/// The last log lines of `compass up`, shown under its live view (and kept in the run directory).
final class EventLog: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var lines: Deque<String> = []
    private let file: FileHandle?

    init(file path: String?) {
        if let path { FileManager.default.createFile(atPath: path, contents: nil) }
        file = path.flatMap { FileHandle(forWritingAtPath: $0) }
    }

    func append(_ line: String) {
        lock.withLock {
            lines.append(line)
            if lines.count > 6 { lines.removeFirst() }
        }
        file?.write(Data((line + "\n").utf8))
    }

    var recent: [String] { lock.withLock { Array(lines) } }
}

/// A log handler feeding an `EventLog`, so log lines do not scribble over the live view.
struct EventLogHandler: LogHandler {
    let log: EventLog
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let time = ISO8601DateFormatter.string(from: Date(), timeZone: .current, formatOptions: [.withTime, .withColonSeparatorInTime])
        let fields = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }).sorted { $0.key < $1.key }
            .map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        log.append("\(time) \(event.level.rawValue) \(event.message)\(fields.isEmpty ? "" : " (\(fields))")")
    }
}

/// `compass up`'s terminal view: its processes, redrawn every second, and the latest events.
enum LiveView {
    static func render(_ launcher: Launcher, events: EventLog, topology: String, logDirectory: String?) -> String {
        let now = MonotonicClock.milliseconds()
        var out = ["compass up \(topology)   (Ctrl-C drains the workers and stops everything)",
                   logDirectory.map { "logs: \($0)/<process>.log" } ?? "", "",
                   "PROCESS               PID      STATE        RESTARTS  UP        LAST EXIT"]
        for p in launcher.processStates() {
            let up = p.phase == .running ? (p.startedAt.map { formatDuration(Double(now.since($0)) / 1000) } ?? "-") : "-"
            out.append([p.name.padding(toLength: 21, withPad: " ", startingAt: 0),
                        (p.pid.map(String.init) ?? "-").padding(toLength: 8, withPad: " ", startingAt: 0),
                        (p.phase == .held ? "HELD" : p.phase.rawValue).padding(toLength: 12, withPad: " ", startingAt: 0),
                        "\(p.restarts)".padding(toLength: 9, withPad: " ", startingAt: 0),
                        up.padding(toLength: 9, withPad: " ", startingAt: 0), p.lastExit ?? "-"].joined(separator: " "))
        }
        let recent = events.recent
        if !recent.isEmpty { out += ["", "recent events:"] + recent.map { "  " + $0 } }
        return fitted(out, columns: terminalColumns())
    }
}
