import CompassSystem
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs a set of processes: starts each with posix_spawn in its own process group, restarts one
/// that dies (with backoff), and stops them all in order: the gateway, the workers (SIGTERM, they
/// drain), then the broker, then SIGKILL to any process group still alive.
///
/// `supervise` runs on one thread; `requestStop` may be called from any thread.
public final class Launcher: Sendable {
    public struct Settings: Sendable {
        /// Restart backoff: doubles from min to max; a process that ran `stableSeconds` resets it.
        public var restartMinMilliseconds: UInt64 = 500
        public var restartMaxMilliseconds: UInt64 = 10_000
        public var stableSeconds: UInt64 = 30
        /// How long the gateway may finish its calls after SIGTERM, then the workers may drain,
        /// then the broker may stop.
        public var gatewayStopMilliseconds: UInt64 = 10_000
        public var workerStopMilliseconds: UInt64 = 15_000
        public var brokerStopMilliseconds: UInt64 = 5_000
        /// Where each process's output goes: inherit ours (nil) or a file per process in this directory.
        public var logDirectory: String?
        /// A process that exits this many times within `crashLoopSeconds` is held back (not
        /// restarted) and reported: a crash loop is a fault to fix, not to retry forever.
        public var crashLoopCount = 5
        public var crashLoopSeconds: UInt64 = 60

        public init() {}
    }

    let specs: [ProcessSpec]
    let settings: Settings
    let logger: Logger
    let stopRequested = Mutex(false)
    let wakeup: WakeupEvent
    /// Restarts per process name, for status and tests.
    let restartCounts = Mutex<[String: Int]>([:])
    /// Current pid per process name.
    let pids = Mutex<[String: Int32]>([:])
    /// What each process is doing, for the live view.
    let states = Mutex<[String: ProcessState]>([:])

    /// One process as the live view shows it.
    public struct ProcessState: Sendable {
        public enum Phase: String, Sendable { case starting, running, restarting, held, stopping, stopped }
        public var name: String
        public var pid: Int32?
        public var phase: Phase
        public var restarts: Int
        public var startedAt: UInt64?
        public var lastExit: String?
    }

    /// Every process's state, in start order.
    public func processStates() -> [ProcessState] {
        let all = states.withLock { $0 }
        return specs.compactMap { all[$0.name] }
    }

    func update(_ name: String, _ change: (inout ProcessState) -> Void) {
        states.withLock { all in
            var s = all[name] ?? ProcessState(name: name, pid: nil, phase: .starting, restarts: 0, startedAt: nil, lastExit: nil)
            change(&s)
            all[name] = s
        }
    }

    public init(specs: [ProcessSpec], settings: Settings = Settings(), logger: Logger) throws {
        self.specs = specs
        self.settings = settings
        self.logger = logger
        wakeup = try WakeupEvent()
    }

    /// Asks `supervise` to stop everything and return.
    public func requestStop() {
        stopRequested.withLock { $0 = true }
        wakeup.signal()
    }

    /// The pid a process runs as now, if it runs.
    public func pid(of name: String) -> Int32? { pids.withLock { $0[name] } }

    /// How many times a process was restarted.
    public func restarts(of name: String) -> Int { restartCounts.withLock { $0[name] ?? 0 } }

    final class Managed {
        let spec: ProcessSpec
        var child: ChildProcess?
        var startedAt: UInt64 = 0
        var restartAt: UInt64?
        var delay: UInt64
        /// When it exited recently, for crash-loop detection.
        var exits: [UInt64] = []
        var held = false

        init(spec: ProcessSpec, delay: UInt64) {
            self.spec = spec
            self.delay = delay
        }
    }

    /// Starts every process and keeps them running until `requestStop`, or SIGINT/SIGTERM on
    /// `signals`; then stops them all and returns.
    public func supervise(signals: SignalWatcher?) throws {
        let managed = specs.map { Managed(spec: $0, delay: settings.restartMinMilliseconds) }
        for m in managed { start(m) }
        var fds = [pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
        if let signals { fds.append(pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)) }
        while !stopRequested.withLock({ $0 }) {
            _ = poll(&fds, nfds_t(fds.count), 200)
            if fds[0].revents != 0 { wakeup.clear() }
            if let signals, fds.count > 1, fds[1].revents != 0 {
                for sig in signals.drain() where sig == SIGINT || sig == SIGTERM {
                    logger.info("\(signalName(sig)): stopping all processes")
                    stopRequested.withLock { $0 = true }
                }
            }
            let now = MonotonicClock.milliseconds()
            for m in managed {
                if let child = m.child, let status = child.poll() {
                    let ran = now.since(m.startedAt)
                    m.child = nil
                    pids.withLock { $0[m.spec.name] = nil }
                    if stopRequested.withLock({ $0 }) { break }
                    // Anything its engine left behind in its process group goes too.
                    child.signalGroup(SIGKILL)
                    if ran >= settings.stableSeconds * 1000 { m.delay = settings.restartMinMilliseconds }
                    m.exits.append(now)
                    m.exits.removeAll { now.since($0) > settings.crashLoopSeconds * 1000 }
                    if m.exits.count >= settings.crashLoopCount {
                        m.held = true
                        update(m.spec.name) { $0.phase = .held; $0.pid = nil; $0.lastExit = "\(status)" }
                        logger.error("process is crash-looping; holding it back (fix the cause, then restart compass up)", metadata: [
                            "process": "\(m.spec.name)", "exits": "\(m.exits.count)", "within_s": "\(settings.crashLoopSeconds)",
                            "last_status": "\(status)", "log": "\(settings.logDirectory.map { "\($0)/\(m.spec.name).log" } ?? "above")"])
                        continue
                    }
                    logger.warning("process exited; restarting", metadata: [
                        "process": "\(m.spec.name)", "status": "\(status)", "ran_ms": "\(ran)", "restart_in_ms": "\(m.delay)"])
                    update(m.spec.name) { $0.phase = .restarting; $0.pid = nil; $0.lastExit = "\(status)" }
                    m.restartAt = now + m.delay
                    m.delay = min(m.delay * 2, settings.restartMaxMilliseconds)
                }
                if let at = m.restartAt, now >= at, !m.held, !stopRequested.withLock({ $0 }) {
                    m.restartAt = nil
                    restartCounts.withLock { $0[m.spec.name, default: 0] += 1 }
                    update(m.spec.name) { $0.restarts += 1 }
                    start(m)
                }
            }
        }
        stopAll(managed)
    }

    func start(_ m: Managed) {
        var environment = ChildProcess.environmentDictionary()
        for (k, v) in m.spec.environment { environment[k] = v }
        var files: [FileAction] = []
        if let dir = settings.logDirectory {
            let path = "\(dir)/\(m.spec.name).log"
            files = [.open(path: path, flags: O_WRONLY | O_CREAT | O_APPEND, as: 1), .open(path: path, flags: O_WRONLY | O_CREAT | O_APPEND, as: 2)]
        }
        do {
            let child = try ChildProcess(executable: m.spec.executable, arguments: m.spec.arguments,
                                         environment: environment, newProcessGroup: true, files: files)
            m.child = child
            m.startedAt = MonotonicClock.milliseconds()
            pids.withLock { $0[m.spec.name] = child.pid }
            update(m.spec.name) { $0.phase = .running; $0.pid = child.pid; $0.startedAt = m.startedAt }
            logger.info("started", metadata: ["process": "\(m.spec.name)", "pid": "\(child.pid)"])
        } catch {
            logger.error("could not start process", metadata: ["process": "\(m.spec.name)", "error": "\(error)"])
            m.restartAt = MonotonicClock.milliseconds() + m.delay
            m.delay = min(m.delay * 2, settings.restartMaxMilliseconds)
        }
    }

    /// The gateway first (no new HTTP requests; it answers what it holds), then the workers (they
    /// drain and say BYE), then the broker; SIGKILL what does not stop in time.
    func stopAll(_ managed: [Managed]) {
        let gateways = managed.filter { $0.spec.role == .gateway }
        let workers = managed.filter { if case .worker = $0.spec.role { return true }; return false }
        let brokers = managed.filter { $0.spec.role == .broker }
        for m in managed { update(m.spec.name) { if $0.phase != .held { $0.phase = .stopping } } }
        stop(gateways, within: settings.gatewayStopMilliseconds)
        stop(workers, within: settings.workerStopMilliseconds)
        stop(brokers, within: settings.brokerStopMilliseconds)
        for m in managed { update(m.spec.name) { if $0.phase != .held { $0.phase = .stopped; $0.pid = nil } } }
        pids.withLock { $0.removeAll() }
    }

    func stop(_ group: [Managed], within milliseconds: UInt64) {
        let running = group.compactMap(\.child)
        for child in running { child.signal(SIGTERM) }
        let deadline = MonotonicClock.milliseconds() + milliseconds
        while running.contains(where: { $0.poll() == nil }) && MonotonicClock.milliseconds() < deadline {
            usleep(20_000)
        }
        for child in running {
            if child.poll() == nil { logger.warning("did not stop in time; killing", metadata: ["pid": "\(child.pid)"]) }
            child.signalGroup(SIGKILL)
            child.wait(timeoutSeconds: 5)
        }
    }
}
