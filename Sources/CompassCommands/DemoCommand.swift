import ArgumentParser
import CompassLauncher
import CompassSystem
import CompassTopology
import Foundation
import Logging

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a local cluster, push the sample prompts through it, print a summary, and stop.",
        discussion: """
        Uses the topology file's pools (default topology.yaml, the synthetic engine) with the broker \
        on private ipc:// endpoints in a temporary directory, so nothing else on the machine is touched.
        """)

    @Option(help: "The topology whose pools to start.") var topology = "topology.yaml"
    @Option(help: "The prompt file to submit.") var prompts = "docs/examples/prompts.jsonl"
    @Option(help: "Where to write the results.") var out: String?
    @Option(help: "Requests per batch.") var batchSize = 16
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let topology = locate(self.topology)
        let prompts = locate(self.prompts)
        var loaded: Topology
        do {
            loaded = try Topology.load(path: topology)
        } catch let error as TopologyError {
            throw fail("compass demo", "\(topology) is not valid:\n\(error)", code: 2)
        }
        guard let pool = loaded.pools.first else { throw fail("compass demo", "\(topology) has no pools") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("compass-demo-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        loaded.broker.frontend = "ipc://\(dir)/frontend"
        loaded.broker.backend = "ipc://\(dir)/backend"

        var logger = logging.bootstrap("compass-demo")
        logger.logLevel = max(logger.logLevel, .warning) // keep the demo's terminal readable
        let specs = Plan.processes(for: loaded, binDirectory: executableDirectory(), logLevel: "warning")
        let launcher = try Launcher(specs: specs, logger: logger)
        let signals = try SignalWatcher([SIGINT, SIGTERM])
        let supervisor = Thread { try? launcher.supervise(signals: signals) }
        supervisor.start()
        print("compass demo: broker and \(specs.count - 1) \(pool.engine) worker(s) of pool '\(pool.name)' started; submitting \(prompts)")

        let output = out ?? "\(dir)/results.jsonl"
        var settings = SubmitSettings(broker: loaded.broker.frontend, pool: pool.name)
        settings.batchSize = batchSize
        let outcome: Result<SubmitSummary, any Error>
        do {
            outcome = .success(try await SubmitJob.run(input: prompts, output: output, truncate: true, settings: settings))
        } catch {
            outcome = .failure(error)
        }
        launcher.requestStop()
        while !supervisor.isFinished { try await Task.sleep(nanoseconds: 20_000_000) }
        switch outcome {
        case .success(let summary):
            print(summary.text)
            if out == nil { print("  (results were written to a temporary file; pass --out to keep them)") }
            print("compass demo: stopped all processes")
            if summary.failed > 0 { throw ExitCode(1) }
        case .failure(let error):
            throw fail("compass demo", "\(error)")
        }
    }

    /// A relative path as given when it exists, else under the repository (COMPASS_HOME, set by bin/compass).
    func locate(_ path: String) -> String {
        if path.hasPrefix("/") || FileManager.default.fileExists(atPath: path) { return path }
        if let home = ProcessInfo.processInfo.environment["COMPASS_HOME"], FileManager.default.fileExists(atPath: "\(home)/\(path)") {
            return "\(home)/\(path)"
        }
        return path
    }
}
