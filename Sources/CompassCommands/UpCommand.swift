import ArgumentParser
import CompassLauncher
import CompassSystem
import CompassTopology
import Foundation
import Logging

struct UpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Start the broker and every worker a topology declares; keep them running until Ctrl-C.",
        discussion: """
        Each process is started fresh (posix_spawn, never fork) in its own process group. A pool's \
        'gpus:' list is cut into disjoint groups of 'tp', one worker each. A worker that dies is \
        restarted with backoff. Ctrl-C or SIGTERM drains the workers, then stops the broker.
        """)

    @Argument(help: "The topology file.") var topology = "topology.yaml"
    @Flag(help: "Only validate the file and explain any errors, with line numbers.") var check = false
    @Flag(help: "Print the commands and GPU groups that would be started, and exit.") var dryRun = false
    @Option(help: "A directory for one log file per process (default on a terminal: runs/up-<time>; elsewhere: this process's output).")
    var logDir: String?
    @Flag(help: "No live view on a terminal; log lines instead.") var noView = false
    @Option(help: "Exits within --crash-loop-seconds after which a process is held back instead of restarted.")
    var crashLoopCount = 5
    @Option(help: "The window for --crash-loop-count.") var crashLoopSeconds: UInt64 = 60
    @OptionGroup var logging: LoggingOptions

    func run() throws {
        let loaded: Topology
        do {
            loaded = try Topology.load(path: topology)
        } catch let error as TopologyError {
            throw fail("compass up", "\(topology) is not valid:\n\(error)", code: 2)
        }
        let specs = Plan.processes(for: loaded, binDirectory: executableDirectory(), logLevel: logging.logLevel)
        if check {
            let workers = specs.count - 1
            print("\(topology) is valid: \(loaded.pools.count) pool(s), \(workers) worker(s)")
            return
        }
        if dryRun {
            for spec in specs {
                if case .worker(let pool, let gpus) = spec.role {
                    print("# \(spec.name): pool \(pool), GPUs \(gpus.isEmpty ? "none (CPU)" : gpus.map(String.init).joined(separator: ","))")
                } else {
                    print("# \(spec.name)")
                }
                print(spec.commandLine)
            }
            return
        }
        let live = isatty(1) == 1 && !noView
        var settings = Launcher.Settings()
        settings.crashLoopCount = crashLoopCount
        settings.crashLoopSeconds = crashLoopSeconds
        // On a terminal the processes' output goes to files, so that the live view stays readable.
        let directory = logDir ?? (live ? "runs/up-" + ISO8601DateFormatter.string(
            from: Date(), timeZone: .current, formatOptions: [.withYear, .withMonth, .withDay, .withTime]) : nil)
        if let directory {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            settings.logDirectory = directory
        }
        let events = EventLog(file: live ? directory.map { "\($0)/compass-up.log" } : nil)
        let logger: Logger
        if live {
            let level = Logger.Level(rawValue: logging.logLevel) ?? .info
            LoggingSystem.bootstrap { _ in EventLogHandler(log: events, logLevel: level) }
            logger = Logger(label: "compass-up")
        } else {
            logger = logging.bootstrap("compass-up")
        }
        let signals = try SignalWatcher([SIGINT, SIGTERM])
        let launcher = try Launcher(specs: specs, settings: settings, logger: logger)
        logger.info("starting \(specs.count) processes from \(topology)", metadata: [
            "frontend": "\(loaded.broker.frontend)", "backend": "\(loaded.broker.backend)"])
        let name = topology
        let view = live ? Thread {
            while !Thread.current.isCancelled {
                print("\u{1b}[H\u{1b}[2J" + LiveView.render(launcher, events: events, topology: name, logDirectory: directory))
                fflush(nil)
                Thread.sleep(forTimeInterval: 1)
            }
        } : nil
        view?.start()
        try launcher.supervise(signals: signals)
        view?.cancel()
        if live { print("\u{1b}[H\u{1b}[2J" + LiveView.render(launcher, events: events, topology: topology, logDirectory: directory)) }
        logger.info("all processes stopped")
    }
}
