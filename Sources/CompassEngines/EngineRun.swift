import CompassProtocol
import CompassSystem
import DequeModule
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The engine process as its generation's thread sees it. One thread owns all of it: it spawned the
/// child, writes its fd 3 (non-blocking), reads its fd 4 and its output, signals and reaps it, all
/// from one poll loop, so nothing here is shared and no thread waits for another.
struct EngineRun {
    let child: ChildProcess
    let wake: WakeupEvent
    /// Our ends of the engine's fd 3 (non-blocking), fd 4, and stdout+stderr; nil once closed.
    var toEngine: Int32?
    var events: Int32?
    var output: Int32?
    let eventLines = LineReader()
    let outputLines = LineReader()
    /// Chunks for fd 3 in order; the first has `written` bytes gone already.
    var writing: Deque<[UInt8]> = []
    var written = 0

    var status: ExitStatus?
    var ready = false
    var fatal: (code: FailureCode, message: String)?
    /// The engine's last lines of output, for diagnosis.
    var tail: Deque<String> = []

    var stopping = false
    /// When to SIGKILL the group unless the process has exited by then.
    var killAt: UInt64?
    /// After SIGKILL: when to stop waiting for the exit.
    var abandonAt: UInt64?
    /// After the exit: when to stop waiting for the pipes to reach end of file.
    var drainUntil: UInt64?

    init(command: EngineCommand, wake: WakeupEvent) throws {
        var opened: [Int32] = []
        func pipe() throws -> PipePair {
            let p = try PipePair()
            opened += [p.readEnd, p.writeEnd]
            return p
        }
        do {
            let toEngine = try pipe(), fromEngine = try pipe(), output = try pipe()
            child = try ChildProcess(
                executable: command.executable, arguments: command.arguments, environment: command.environment,
                newProcessGroup: true,
                files: [.inherit(source: toEngine.readEnd, as: 3), .inherit(source: fromEngine.writeEnd, as: 4),
                        .inherit(source: output.writeEnd, as: 1), .inherit(source: output.writeEnd, as: 2)])
            for fd in [toEngine.readEnd, fromEngine.writeEnd, output.writeEnd] { close(fd) }
            self.toEngine = toEngine.writeEnd
            events = fromEngine.readEnd
            self.output = output.readEnd
            try? setNonBlocking(toEngine.writeEnd)
        } catch {
            for fd in opened { close(fd) }
            throw error
        }
        self.wake = wake
    }

    /// Runs until the process is reaped and its pipes are drained (or the deadlines give up).
    mutating func run(_ gen: ProcessEngine.Generation, _ engine: ProcessEngine) {
        defer { for fd in [toEngine, events, output].compactMap({ $0 }) { close(fd) } }
        let graceMilliseconds = UInt64(max(0, engine.hooks.stopGraceSeconds) * 1000)
        while true {
            let now = MonotonicClock.milliseconds()
            let (stop, lines) = gen.control.withLock { c in
                defer { c.outbox.removeAll() }
                return (c.stopRequested, c.outbox)
            }
            writing.append(contentsOf: lines)
            if stop && !stopping {
                stopping = true
                writing.append(EngineProtocol.shutdown)
                if status == nil {
                    child.signalGroup(SIGTERM)
                    killAt = now + graceMilliseconds
                }
            }
            if !writing.isEmpty { writeSome() }
            if status == nil, let s = child.poll() {
                status = s
                child.signalGroup(SIGKILL) // whatever it started that is still around
                drainUntil = now + 1000
            }
            if status == nil {
                if events == nil && killAt == nil && abandonAt == nil { killAt = now + 5000 } // fd 4 closed: it is ending
                if let at = killAt, now >= at {
                    child.signalGroup(SIGKILL)
                    killAt = nil
                    abandonAt = now + 10_000
                }
                if let at = abandonAt, now >= at { return } // not even SIGKILL ended it (a process stuck in the kernel)
            } else if (events == nil && output == nil) || now >= drainUntil! {
                return
            }
            poll(timeout: nextTimeout(now), gen, engine)
        }
    }

    /// Waits up to `timeout` ms for the pipes or the wake-up, and serves what is ready.
    mutating func poll(timeout: Int32, _ gen: ProcessEngine.Generation, _ engine: ProcessEngine) {
        var fds = [pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)]
        for fd in [events, output] { if let fd { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) } }
        if let fd = toEngine, !writing.isEmpty { fds.append(pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)) }
        guard Glibc.poll(&fds, nfds_t(fds.count), timeout) > 0 else { return }
        for p in fds where p.revents != 0 {
            switch p.fd {
            case wake.fd: wake.clear()
            case toEngine: writeSome()
            case events:
                let reader = eventLines
                if !reader.read(p.fd, { line in self.handle(line, gen, engine) }) { close(p.fd); events = nil }
            case output:
                let reader = outputLines
                if !reader.read(p.fd, splitCR: true, flushPartial: true, { line in self.log(line, engine) }) { close(p.fd); output = nil }
            default: break
            }
        }
    }

    /// The poll timeout: short while waiting for an exit (waitpid has no descriptor to poll), and
    /// never past a deadline.
    func nextTimeout(_ now: UInt64) -> Int32 {
        var timeout: UInt64 = (status == nil && (stopping || events == nil)) ? 10 : 100
        for deadline in [killAt, abandonAt, drainUntil].compactMap({ $0 }) { timeout = min(timeout, deadline.since(now)) }
        return Int32(timeout)
    }

    /// Writes queued chunks until the pipe is full; gives up on fd 3 once the engine stops reading it.
    mutating func writeSome() {
        guard let fd = toEngine else { writing.removeAll(); return }
        while let chunk = writing.first {
            if chunk.isEmpty { writing.removeFirst(); continue }
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                close(fd) // EPIPE: the engine closed fd 3
                toEngine = nil
                writing.removeAll()
                return
            }
            written += n
            if written == chunk.count {
                writing.removeFirst()
                written = 0
            }
        }
    }

    mutating func handle(_ line: UnsafeRawBufferPointer, _ gen: ProcessEngine.Generation, _ engine: ProcessEngine) {
        switch engine.message(line) {
        case .event(let event):
            if case .ready = event { ready = true }
            engine.post(event, gen)
        case .fatal(let code, let message):
            fatal = (code, message)
        case .ignored:
            break
        }
    }

    mutating func log(_ line: UnsafeRawBufferPointer, _ engine: ProcessEngine) {
        let text = String(decoding: line, as: UTF8.self)
        tail.append(text)
        if tail.count > 50 { tail.removeFirst() }
        engine.logger.info("[engine] \(text)", metadata: ["engine": "\(engine.name)"])
    }

    /// Why the engine died: its own `fatal` word, else what its last output says, else how it ended.
    func classify() -> (FailureCode, String) {
        let how = status.map { "\($0)" } ?? "did not exit"
        let last = tail.last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? ""
        if let fatal { return (fatal.code, "\(fatal.message) (engine \(how))") }
        let text = tail.joined(separator: "\n").lowercased()
        if text.contains("out of memory") || text.contains("outofmemoryerror") {
            return (.oom, "the engine ran out of memory (\(how)): \(last)")
        }
        if !ready { return (.startupFailed, "the engine \(how) before it was ready" + (last.isEmpty ? "" : ": \(last)")) }
        return (.engineDead, "the engine \(how)" + (last.isEmpty ? "" : "; last output: \(last)"))
    }
}
