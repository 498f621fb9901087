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
    @Option(help: "GPU indices this worker owns, e.g. 0,1 (as many as --tp).") var gpus: String?
    @Option(help: "Engine: \(EngineFactory.names.joined(separator: ", ")).") var engine = "synthetic"
    @Option(help: "Model path or name for the engine.") var model = ""
    @Option(name: .customLong("engine-arg"), help: "An engine setting as key=value (repeatable).")
    var engineArgs: [String] = []
    @Option(help: "Batches the broker may send ahead (one runs, the rest wait).") var credit = 2
    @Option(help: "Largest batch (requests) to ask for; reported to the broker.") var maxBatch = 256
    @Option(help: "Milliseconds SIGTERM waits for the running batch before handing it back.") var drainMs: UInt64 = 30_000
    @Option(help: "Milliseconds the engine may take to become ready.") var startupTimeoutMs: UInt64 = 600_000
    @Option(help: "Milliseconds a batch may run without progress before the engine is killed (0: never).")
    var progressTimeoutMs: UInt64 = 300_000
    @Option(help: "Consecutive failed engine starts before the worker exits with an error.") var maxStartFailures = 5
    @OptionGroup var logging: LoggingOptions

    public init() {}

    var gpuList: [Int] {
        (gpus ?? "").split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

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
        for arg in engineArgs where !arg.contains("=") || arg.hasPrefix("=") {
            throw ValidationError("--engine-arg '\(arg)' must be key=value")
        }
        if let gpus {
            let parts = gpus.split(separator: ",")
            guard parts.allSatisfy({ Int($0.trimmingCharacters(in: .whitespaces)).map { $0 >= 0 } ?? false }) else {
                throw ValidationError("--gpus must be GPU indices separated by commas, e.g. 0,1,2,3")
            }
            guard Set(parts).count == parts.count else { throw ValidationError("--gpus lists a GPU twice") }
            guard parts.count == tp else {
                throw ValidationError("--gpus lists \(parts.count) GPUs but --tp is \(tp); a worker owns exactly one TP group of \(tp)")
            }
        }
    }

    public func run() throws {
        let logger = logging.bootstrap("compass-worker")
        var options = WorkerOptions(broker: broker, pool: pool)
        options.tp = tp
        options.gpus = gpuList
        options.engine = engine
        options.model = model
        options.engineArguments = engineArguments
        options.credit = credit
        options.maxBatch = maxBatch
        options.drainMilliseconds = drainMs
        options.startupTimeoutMilliseconds = startupTimeoutMs
        options.progressTimeoutMilliseconds = progressTimeoutMs
        options.maxStartFailures = maxStartFailures
        let signals = try SignalWatcher([SIGTERM, SIGINT])
        let engineInstance: any Engine
        do {
            engineInstance = try EngineFactory.make(name: engine, arguments: engineArguments, model: model, tp: tp,
                                                    gpus: gpuList, workerLabel: "\(pool)@\(getpid())")
        } catch {
            throw fail("compass-worker", "\(error)", code: 2)
        }
        let context = try ZMQContext()
        let worker = Worker(options: options, context: context, engine: engineInstance, logger: logger)
        let code = try worker.run(signals: signals)
        if code != 0 { throw ExitCode(code) }
    }
}
