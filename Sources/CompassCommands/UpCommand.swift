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
    @Option(help: "A directory for one log file per process (default: logs go to this terminal).") var logDir: String?
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
        let logger = logging.bootstrap("compass-up")
        var settings = Launcher.Settings()
        if let logDir {
            try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
            settings.logDirectory = logDir
        }
        let signals = try SignalWatcher([SIGINT, SIGTERM])
        let launcher = try Launcher(specs: specs, settings: settings, logger: logger)
        logger.info("starting \(specs.count) processes from \(topology)", metadata: [
            "frontend": "\(loaded.broker.frontend)", "backend": "\(loaded.broker.backend)"])
        try launcher.supervise(signals: signals)
        logger.info("all processes stopped")
    }
}
