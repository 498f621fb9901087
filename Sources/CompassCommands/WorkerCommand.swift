import ArgumentParser
import CompassEngines
import CompassProtocol
import CompassSystem
import CompassWorker
import Foundation
import ZMQ

/// `compass-worker`: one TP group, one engine, connected to a broker.
public struct WorkerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "compass-worker",
        abstract: "Serve one pool with one engine on one tensor-parallel group of GPUs.",
        discussion: """
        Start one worker per TP group, anywhere that can reach the broker's backend; it registers and \
        receives work at once. The worker starts its engine as a separate process group (never by fork), \
        heartbeats, reconnects with backoff when the broker goes away, restarts a dead or stalled engine, \
        and on SIGTERM finishes its running batch, hands back the rest, says BYE and exits.
        """)

    @Option(help: "The broker's backend endpoint.") var broker = "tcp://127.0.0.1:5556"
    @Option(help: "The pool to serve.") var pool: String
    @Option(help: "Tensor-parallel size: GPUs per engine.") var tp = 1
    @Option(help: "GPU indices this worker owns, e.g. 0,1 (as many as --tp), or 'auto' for --tp free ones.") var gpus: String?
    @Option(help: "Directory of the per-GPU lock files.") var lockDir = ProcessInfo.processInfo.environment["COMPASS_LOCK_DIR"] ?? "/tmp/compass-gpu-locks"
    @Option(help: "Seconds to wait, after an engine dies, for its GPU memory to be released before restarting it.")
    var gpuReleaseTimeout: Double = 60
    @Option(help: "Engine: \(EngineFactory.names.joined(separator: ", ")).") var engine = "synthetic"
    @Option(help: "Model path or name for the engine.") var model = ""
    @Option(name: .customLong("engine-arg"), help: "An engine setting as key=value (repeatable).")
    var engineArgs: [String] = []
    @Option(help: "Batches the broker may send ahead (one runs, the rest wait); with an engine that declares its capacity in sequences, the least window: the worker asks for as many batches as keep the engine full.")
    var credit = 2
    @Option(help: "Requests held beyond an engine's sequence capacity, so a freed slot is filled without waiting for the broker (default: a quarter of the capacity).")
    var readAhead: Int?
    @Option(help: "Requests handed to an engine beyond its sequence capacity, so it starts the next one the step a sequence ends (default: the capacity, so a whole engine's worth of requests that end together is replaced at once).")
    var engineQueue: Int?
    @Option(help: "Milliseconds between log lines of the engine's occupancy, from its own step counts (0: never).")
    var statsIntervalMs: UInt64 = 10_000
    @Option(help: "Largest batch (requests) to ask for; reported to the broker.") var maxBatch = 256
    @Option(help: "Milliseconds SIGTERM waits for the running batch before handing it back.") var drainMs: UInt64 = 30_000
    @Option(help: "Milliseconds the engine may take to become ready.") var startupTimeoutMs: UInt64 = 600_000
    @Option(help: "Milliseconds a batch may run without progress before the engine is killed (0: never).")
    var progressTimeoutMs: UInt64 = 300_000
    @Option(help: "Consecutive failed engine starts before the worker exits with an error.") var maxStartFailures = 5
    @OptionGroup var curve: CurveClientOptions
    @OptionGroup var logging: LoggingOptions

    public init() {}

    var engineArguments: [String: String] {
        var out: [String: String] = [:]
        for arg in engineArgs {
            let parts = arg.split(separator: "=", maxSplits: 1)
            out[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        return out
    }

    public func validate() throws {
        guard WireProtocol.isValidPoolName(pool) else { throw ValidationError("--pool '\(pool)' is not a valid pool name") }
        guard tp >= 1 else { throw ValidationError("--tp must be at least 1") }
        guard credit >= 1 else { throw ValidationError("--credit must be at least 1") }
        guard (readAhead ?? 0) >= 0, (engineQueue ?? 0) >= 0 else { throw ValidationError("--read-ahead and --engine-queue must be 0 or more") }
        for arg in engineArgs where !arg.contains("=") || arg.hasPrefix("=") {
            throw ValidationError("--engine-arg '\(arg)' must be key=value")
        }
        if let gpus, gpus != "auto" {
            let parts = gpus.split(separator: ",")
            guard parts.allSatisfy({ Int($0.trimmingCharacters(in: .whitespaces)).map { $0 >= 0 } ?? false }) else {
                throw ValidationError("--gpus must be GPU indices separated by commas (e.g. 0,1,2,3) or 'auto'")
            }
            guard Set(parts).count == parts.count else { throw ValidationError("--gpus lists a GPU twice") }
            guard parts.count == tp else {
                throw ValidationError("--gpus lists \(parts.count) GPUs but --tp is \(tp); a worker owns exactly one TP group of \(tp)")
            }
        }
    }

    public func run() throws {
        let logger = logging.bootstrap("compass-worker")
        let devices: WorkerGPUs
        do {
            devices = try WorkerGPUs(requested: gpus, tp: tp, lockDirectory: lockDir, releaseTimeoutSeconds: gpuReleaseTimeout, logger: logger)
        } catch {
            throw fail("compass-worker", "\(error)", code: 2)
        }
        var options = WorkerOptions(broker: broker, pool: pool)
        options.tp = tp
        options.gpus = devices.indices
        options.engine = engine
        options.model = model
        options.engineArguments = engineArguments
        options.credit = credit
        options.readAhead = readAhead
        options.engineQueue = engineQueue
        options.statsIntervalMilliseconds = statsIntervalMs
        options.maxBatch = maxBatch
        options.drainMilliseconds = drainMs
        options.startupTimeoutMilliseconds = startupTimeoutMs
        options.progressTimeoutMilliseconds = progressTimeoutMs
        options.maxStartFailures = maxStartFailures
        options.curve = try curve.load("compass-worker")
        let signals = try SignalWatcher([SIGTERM, SIGINT])
        var settings = EngineSettings()
        settings.arguments = engineArguments
        settings.model = model
        settings.tp = tp
        settings.gpus = devices.indices
        settings.workerLabel = "\(pool)@\(getpid())"
        settings.hooks = devices.hooks
        let engineInstance: any Engine
        do {
            engineInstance = try EngineFactory.make(name: engine, settings: settings, logger: logger)
        } catch {
            throw fail("compass-worker", "\(error)", code: 2)
        }
        let context = try ZMQContext()
        let worker = Worker(options: options, context: context, engine: engineInstance, logger: logger, gpuInfo: { devices.info() })
        let code = try worker.run(signals: signals)
        if code != 0 { throw ExitCode(code) }
    }
}
