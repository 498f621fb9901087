import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Push a JSONL file of prompts through a pool and write one result line per request.",
        discussion: """
        Each input line is {"custom_id": ..., "prompt": ...} (or "messages" for chat), optionally with \
        max_tokens, temperature, top_p, stop, seed; OpenAI Batch API lines ({"custom_id", "method", "url", \
        "body"}) work too. Lines are cut into batches; a bounded window of batches is kept in flight; \
        results are written as they arrive, one JSON line per request: custom_id, text, prompt_tokens, \
        completion_tokens, finish_reason, and error (null when it succeeded). A line that cannot be read \
        gets a result line with its error; nothing is dropped. Exits 0 when every request succeeded, 1 \
        otherwise.
        """)

    @Argument(help: "The JSONL file of requests.") var file: String
    @Option(help: "The pool to run the requests on.") var pool = "default"
    @Option(help: "The broker's frontend endpoint.") var broker = "tcp://127.0.0.1:5555"
    @Option(help: "Requests per batch.") var batchSize = 16
    @Option(help: "Batches in flight at once.") var window = 32
    @Option(help: "Where to write results (default: FILE with .results.jsonl).") var out: String?
    @Flag(help: "Replace the results file if it exists.") var overwrite = false
    @Flag(help: "Continue an interrupted run: skip requests already in the results file and collect what the broker still holds for it.")
    var resume = false
    @Option(help: "Producer session id (default: random).") var session: String?
    @Option(help: "Attempts per batch (0: the broker's default).") var maxAttempts: UInt16 = 0
    @Option(help: "Priority of these batches in their pool (higher first).") var priority: Int16 = 0
    @Option(help: "Milliseconds after which an unfinished batch fails as timeout (0: none).") var deadlineMs: UInt32 = 0
    @Option(help: "max_tokens for requests that do not set one.") var maxTokens: Int?
    @Option(help: "Seconds to wait for a worker of the pool to register when the broker does not know the pool yet (0: fail at once).")
    var waitForPool: UInt64 = 300
    @Option(help: "Affinity key per batch: 'prefix' (the first request's first 256 bytes, so batches that start alike run on one worker and its engine computes the shared prefix once) or 'none'.")
    var affinity: AffinityMode = .prefix
    @Flag(help: "No progress display.") var quiet = false
    @OptionGroup var curve: CurveClientOptions

    func validate() throws {
        if resume && overwrite { throw ValidationError("--resume and --overwrite contradict each other") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        guard FileManager.default.isReadableFile(atPath: file) else { throw ValidationError("cannot read \(file)") }
        if let maxTokens, maxTokens < 0 { throw ValidationError("--max-tokens must not be negative") }
        guard waitForPool <= 86_400 else { throw ValidationError("--wait-for-pool is in seconds, at most 86400") }
    }

    var outputPath: String {
        if let out { return out }
        let base = file.hasSuffix(".jsonl") ? String(file.dropLast(6)) : file
        return base + ".results.jsonl"
    }

    func run() async throws {
        let output = outputPath
        if FileManager.default.fileExists(atPath: output) && !overwrite && !resume {
            throw fail("compass submit", "\(output) exists; pass --resume to continue that run, --overwrite to replace it, or --out to choose another file", code: 2)
        }
        var settings = SubmitSettings(broker: broker, pool: pool)
        settings.batchSize = batchSize
        settings.window = window
        if let session { settings.session = session }
        settings.maxAttempts = maxAttempts
        settings.priority = priority
        settings.deadlineMilliseconds = deadlineMs
        settings.defaultMaxTokens = maxTokens
        settings.showProgress = !quiet
        settings.resume = resume
        settings.poolWaitMilliseconds = waitForPool * 1000
        settings.affinity = affinity
        settings.curve = try curve.load("compass submit")
        // Ctrl-C cancels the batches in flight on the broker (their requests get a 'cancelled'
        // line, so the results file still has one line per request) and exits 130.
        let job = Task { try await SubmitJob.run(input: file, output: output, truncate: true, settings: settings) }
        let interrupted = InterruptFlag()
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler {
            if interrupted.set() {
                FileHandle.standardError.write(Data("\ncompass submit: interrupted; cancelling the batches in flight (Ctrl-C again to quit now)\n".utf8))
                job.cancel()
            } else {
                Glibc.exit(130)
            }
        }
        source.resume()
        defer { source.cancel() }
        let summary: SubmitSummary
        do {
            summary = try await job.value
        } catch let failure as CommandFailure {
            throw fail("compass submit", failure.message)
        }
        print(summary.text)
        if interrupted.isSet { throw ExitCode(130) }
        if summary.failed > 0 { throw ExitCode(1) }
    }
}

/// Set once by the first Ctrl-C.
final class InterruptFlag: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var value = false

    /// Sets the flag; true if this call set it.
    func set() -> Bool { lock.withLock { defer { value = true }; return !value } }
    var isSet: Bool { lock.withLock { value } }
}

extension AffinityMode: ExpressibleByArgument {}
