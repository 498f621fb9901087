import ArgumentParser
import CompassBroker
import CompassJournal
import CompassSecurity
import CompassProtocol
import CompassScheduler
import CompassSystem
import Foundation
import ZMQ

/// `compass-broker`: takes batches from producers and hands them to workers.
public struct BrokerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "compass-broker",
        abstract: "Queue prompt batches from producers and dispatch them to GPU workers over ZeroMQ.",
        discussion: """
        Binds two ROUTER sockets: the frontend for producers (compass submit, the client library) and \
        the backend for workers (compass-worker). Workers pull batches by credit; a worker that stops \
        heartbeating is declared dead and its batches go back to the queue. Once bound, one line \
        'compass-broker listening frontend=EP backend=EP' is printed on stdout (wildcard ports resolved).
        """)

    @Option(help: "Endpoint producers connect to.") var frontend = "tcp://127.0.0.1:5555"
    @Option(help: "Endpoint workers connect to.") var backend = "tcp://127.0.0.1:5556"
    @Option(name: .customLong("pool"), help: "A pool to accept batches for before any worker joins it (repeatable).")
    var pools: [String] = []
    @Option(help: "Heartbeat interval in milliseconds, both directions.") var heartbeatMs: UInt64 = 1000
    @Option(help: "Missed heartbeats after which a worker is declared dead.") var liveness: UInt64 = 3
    @Option(help: "Default attempts per batch (a SUBMIT may set its own).") var maxAttempts: UInt16 = 3
    @Option(name: .customLong("pool-attempts"), help: "Attempts per batch for one pool, as POOL=N (repeatable).")
    var poolAttempts: [String] = []
    @Option(help: "Bytes a pool may hold (queued payloads plus unacknowledged results) before SUBMIT gets 'busy'.")
    var maxPoolBytes: Int = WireProtocol.defaultMaxPoolBytes
    @Option(help: "Bytes one producer session may hold, all pools together (its payloads plus its unacknowledged results) before its own SUBMITs get 'busy' (default: a quarter of --max-pool-bytes).")
    var sessionMaxBytes: Int?
    @Option(help: "Acknowledged batch ids remembered (the most recent), so that a late re-SUBMIT of one is refused rather than run again.")
    var rememberedAcks: Int = WireProtocol.defaultRememberedAcks
    @Option(help: "Batches a pool may queue before SUBMIT gets 'busy'.") var maxQueuedBatches: Int = 100_000
    @Option(help: "Largest batch payload in bytes.") var maxPayloadBytes: Int = WireProtocol.defaultMaxPayloadBytes
    @Option(help: "Milliseconds a worker may hold one batch before it is taken back (0: no lease).") var leaseMs: UInt64 = 0
    @Option(help: "Milliseconds an unacknowledged result is kept for its producer.") var resultRetentionMs: UInt64 = 3_600_000
    @Option(help: "Placement by affinity key: a worker takes a keyed batch as its key's choice while it runs fewer than this many times the pool's mean batches per worker (0: keys are ignored, round robin).")
    var affinityLoadFactor: Double = 1.25
    @Option(help: "On SIGTERM, milliseconds to keep delivering results of running batches before exiting.")
    var shutdownGraceMs: UInt64 = 0
    @Flag(help: "Skip the JSON syntax check of SUBMIT payloads (workers then reject bad ones).") var noValidatePayloads = false
    @Option(help: "The journal (SQLite) file that makes accepted batches survive a broker restart, or 'none' for memory only.")
    var journal = "none"
    @Option(help: "Journal durability: full (fsync each group commit) or normal (survives a broker crash, not a power loss).")
    var journalSync = "full"
    @Option(help: "libzmq I/O threads.") var ioThreads: Int32 = 1
    @Option(help: "The broker's secret CURVE key file (compass keys new): turns on CURVE on both sockets.")
    var curveSecret: String?
    @Option(help: "Producer public keys admitted: a directory of .pub files or a file of keys (reloaded on SIGHUP or change).")
    var allowProducers: String?
    @Option(help: "Worker public keys admitted, likewise.") var allowWorkers: String?
    @Flag(help: "Bind a non-loopback address without CURVE and without warning.") var insecure = false
    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; port 0 picks one).")
    var metrics: String?
    @OptionGroup var logging: LoggingOptions

    public init() {}

    public func validate() throws {
        guard heartbeatMs >= 10 else { throw ValidationError("--heartbeat-ms must be at least 10") }
        guard liveness >= 1 else { throw ValidationError("--liveness must be at least 1") }
        guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
        if let sessionMaxBytes, sessionMaxBytes < 1 { throw ValidationError("--session-max-bytes must be at least 1") }
        guard rememberedAcks >= 0 else { throw ValidationError("--remembered-acks must be 0 or more") }
        guard affinityLoadFactor == 0 || (affinityLoadFactor >= 1 && affinityLoadFactor <= 1000) else {
            throw ValidationError("--affinity-load-factor must be 0 (off) or from 1 to 1000")
        }
        for entry in poolAttempts {
            let parts = entry.split(separator: "=")
            guard parts.count == 2, WireProtocol.isValidPoolName(String(parts[0])), let n = UInt16(parts[1]), n >= 1 else {
                throw ValidationError("--pool-attempts '\(entry)' must be POOL=N with N >= 1")
            }
        }
        if curveSecret == nil && (allowProducers != nil || allowWorkers != nil) {
            throw ValidationError("--allow-producers and --allow-workers need --curve-secret (allowlists check CURVE keys)")
        }
        guard Journal.Durability(rawValue: journalSync) != nil else {
            throw ValidationError("--journal-sync must be full or normal")
        }
        for pool in pools where !WireProtocol.isValidPoolName(pool) {
            throw ValidationError("--pool '\(pool)' is not a valid pool name (1-64 characters of A-Z a-z 0-9 . _ -)")
        }
    }

    public func run() throws {
        let logger = logging.bootstrap("compass-broker")
        var options = BrokerOptions(frontend: frontend, backend: backend)
        options.scheduler.heartbeatMilliseconds = heartbeatMs
        options.scheduler.liveness = liveness
        options.scheduler.defaultMaxAttempts = maxAttempts
        options.scheduler.declaredPools = Set(pools)
        for entry in poolAttempts {
            let parts = entry.split(separator: "=")
            options.scheduler.poolMaxAttempts[String(parts[0])] = UInt16(parts[1])
        }
        options.scheduler.maxPoolBytes = maxPoolBytes
        options.scheduler.maxSessionBytes = sessionMaxBytes
        options.scheduler.rememberedAcks = rememberedAcks
        options.scheduler.maxQueuedBatches = maxQueuedBatches
        options.scheduler.leaseMilliseconds = leaseMs
        options.scheduler.resultRetentionMilliseconds = resultRetentionMs
        options.scheduler.affinityLoadFactor = affinityLoadFactor
        options.maxPayloadBytes = maxPayloadBytes
        options.validatePayloads = !noValidatePayloads
        options.ioThreads = ioThreads
        if journal != "none" {
            options.journalPath = journal
            options.journalDurability = Journal.Durability(rawValue: journalSync) ?? .full
        }
        if let curveSecret {
            do {
                options.curve = CurveServerKeys(keys: try KeyFiles.loadSecret(curveSecret), producers: allowProducers, workers: allowWorkers)
            } catch let error as SecurityError {
                throw fail("compass-broker", error.message, code: 2)
            }
            if allowProducers == nil || allowWorkers == nil {
                logger.warning("CURVE without an allowlist for \(allowProducers == nil ? "producers" : "workers"): traffic is encrypted but any key is admitted")
            }
        } else if !insecure, let exposed = [frontend, backend].first(where: { !isLoopbackEndpoint($0) }) {
            logger.warning("\(exposed) is reachable from other hosts and runs without CURVE: anyone who can reach it can submit work, read results or pose as a worker. Use --curve-secret (docs/security.md), or --insecure to silence this.")
        }
        var metricsServer: Task<Void, Never>?
        defer { metricsServer?.cancel() }
        if let metrics {
            do {
                metricsServer = try MetricsEndpoint.start(metrics, logger: logger)
            } catch let failure as CommandFailure {
                throw fail("compass-broker", failure.message, code: 2)
            }
        }
        let signals = try SignalWatcher([SIGTERM, SIGINT, SIGHUP])
        let broker: Broker
        do {
            let context = try ZMQContext(ioThreads: ioThreads)
            broker = try Broker(options: options, context: context, logger: logger)
        } catch let error as ZMQError {
            let hint = error.code == EADDRINUSE ? " (is another broker running on it?)" : ""
            throw fail("compass-broker", "cannot start: \(error)\(hint)")
        } catch let error as JournalError {
            throw fail("compass-broker", "\(error)")
        } catch let error as SecurityError {
            throw fail("compass-broker", error.message, code: 2)
        }
        print("compass-broker listening frontend=\(broker.frontendEndpoint) backend=\(broker.backendEndpoint)")
        fflush(nil) // flush stdout: launchers and tests wait for this line
        try broker.run(signals: signals, shutdownGraceMilliseconds: shutdownGraceMs)
    }
}
