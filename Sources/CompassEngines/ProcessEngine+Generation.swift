import CompassProtocol
import CompassSystem
import DequeModule
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension ProcessEngine {
    /// One run of the engine process and what belongs to it.
    final class Generation: @unchecked Sendable {
        // @unchecked: `child`, `pid`, `ready`, `fatal` are written by the supervising thread before the
        // events that publish them; `stopping` is a flag read after the process ends; `tail` is locked.
        let number: Int
        let previousGroup: Int32?
        let outbox = Outbox()
        var child: ChildProcess?
        var pid: Int32?
        var ready = false
        var stopping = false
        var fatal: (code: FailureCode, message: String)?
        let tailLock = NSLock()
        var tail: Deque<String> = []

        init(number: Int, previousGroup: Int32?) {
            self.number = number
            self.previousGroup = previousGroup
        }

        func remember(_ line: String) {
            tailLock.withLock {
                tail.append(line)
                if tail.count > 50 { tail.removeFirst() }
            }
        }

        var lastLines: [String] { tailLock.withLock { Array(tail) } }
    }

    /// Lines queued for the engine's fd 3, written by the generation's writer thread.
    final class Outbox: @unchecked Sendable {
        // @unchecked: all state is guarded by `condition`.
        let condition = NSCondition()
        var lines: Deque<[UInt8]> = []
        var closed = false

        func send(_ line: [UInt8]) {
            condition.withLock {
                if !closed { lines.append(line) }
                condition.signal()
            }
        }

        func close() {
            condition.withLock {
                closed = true
                condition.broadcast()
            }
        }

        /// Writes queued lines to `fd` until closed or the engine stops reading.
        func pump(to fd: Int32) {
            defer { Glibc.close(fd) }
            while true {
                condition.lock()
                while lines.isEmpty && !closed { condition.wait() }
                if lines.isEmpty { condition.unlock(); return }
                let line = lines.removeFirst()
                condition.unlock()
                do { try line.withUnsafeBytes { try writeAll(fd, $0) } } catch { return }
            }
        }
    }

    /// The generation's main thread: wait for the GPUs, spawn, read events until the engine ends.
    func supervise(_ gen: Generation) {
        if let group = gen.previousGroup {
            // The last generation's processes must be gone before a new one takes the GPUs.
            let deadline = Date().addingTimeInterval(30)
            while kill(-group, 0) == 0 && Date() < deadline { usleep(20_000) }
            if kill(-group, 0) == 0 { kill(-group, SIGKILL) }
        }
        hooks.beforeStart()
        guard lock.withLock({ generation == gen.number }) else { return }
        let toEngine: PipePair, fromEngine: PipePair, output: PipePair
        do {
            toEngine = try PipePair()
            fromEngine = try PipePair()
            output = try PipePair()
            let child = try ChildProcess(
                executable: command.executable, arguments: command.arguments, environment: command.environment,
                newProcessGroup: true,
                files: [.inherit(source: toEngine.readEnd, as: 3), .inherit(source: fromEngine.writeEnd, as: 4),
                        .inherit(source: output.writeEnd, as: 1), .inherit(source: output.writeEnd, as: 2)])
            gen.child = child
            gen.pid = child.pid
        } catch {
            post(.died(code: .startupFailed, message: "cannot start the \(name) engine (\(command.executable)): \(error)"), gen)
            return
        }
        close(toEngine.readEnd)
        close(fromEngine.writeEnd)
        close(output.writeEnd)
        lock.withLock { if generation == gen.number { lastGroup = gen.pid } }
        hooks.onSpawn(gen.pid!)
        logger.info("engine process started", metadata: ["engine": "\(name)", "pid": "\(gen.pid!)", "command": "\(command.executable) \(command.arguments.joined(separator: " "))"])
        let writer = Thread { gen.outbox.pump(to: toEngine.writeEnd) }
        writer.start()
        let logs = Thread { [self] in self.relayOutput(output.readEnd, gen) }
        logs.start()
        readEvents(fromEngine.readEnd, gen)
        close(fromEngine.readEnd)
        ended(gen)
        while !logs.isFinished { usleep(10_000) }
    }

    /// Logs the engine's stdout and stderr, prefixed, and keeps the last lines for diagnosis.
    func relayOutput(_ fd: Int32, _ gen: Generation) {
        defer { close(fd) }
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        func flushLine(_ bytes: ArraySlice<UInt8>) {
            let line = String(decoding: bytes, as: UTF8.self)
            gen.remember(line)
            logger.info("[engine] \(line)", metadata: ["engine": "\(name)"])
        }
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            pending += buffer[0..<n]
            while let nl = pending.firstIndex(where: { $0 == 0x0a || $0 == 0x0d }) {
                if nl > 0 { flushLine(pending[0..<nl]) }
                pending.removeFirst(nl + 1)
            }
        }
        if !pending.isEmpty { flushLine(pending[...]) }
    }

    /// Reads event lines from fd 4 until it closes.
    func readEvents(_ fd: Int32, _ gen: Generation) {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            pending += buffer[0..<n]
            var start = 0
            while let nl = pending[start...].firstIndex(of: 0x0a) {
                if nl > start { handle(Array(pending[start..<nl]), gen) }
                start = nl + 1
            }
            pending.removeFirst(start)
        }
    }

    func handle(_ line: [UInt8], _ gen: Generation) {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
              let type = object["type"] as? String else {
            logger.warning("engine sent a line that is not a protocol message", metadata: ["line": "\(String(decoding: line.prefix(200), as: UTF8.self))"])
            return
        }
        let batchID = object["batch_id"] as? String ?? ""
        let attempt = UInt32(truncatingIfNeeded: (object["attempt"] as? Int) ?? 0)
        switch type {
        case "ready":
            gen.ready = true
            let detail = [object["detail"], object["model"], (object["start_method"] as? String).map { "start method \($0)" }]
                .compactMap { $0 as? String }.joined(separator: ", ")
            let capacity = EngineCapacity(maxBatches: object["max_batches"] as? Int ?? 1, sequences: object["capacity"] as? Int,
                                          tokens: object["capacity_tokens"] as? Int)
            post(.ready(detail: detail, capacity: capacity), gen)
        case "progress":
            post(.progress(batchID: batchID, attempt: attempt, done: UInt32(clamping: object["done"] as? Int ?? 0),
                           total: UInt32(clamping: object["total"] as? Int ?? 0)), gen)
        case "result":
            let results = object["results"] as? [Any] ?? []
            let payload = (try? JSONSerialization.data(withJSONObject: results)).map { [UInt8]($0) } ?? Array("[]".utf8)
            let dicts = results.compactMap { $0 as? [String: Any] }
            let stats = ResultStats(
                requests: dicts.count, failedRequests: dicts.filter { !($0["error"] is NSNull) && $0["error"] != nil }.count,
                promptTokens: dicts.reduce(0) { $0 + ($1["prompt_tokens"] as? Int ?? 0) },
                completionTokens: dicts.reduce(0) { $0 + ($1["completion_tokens"] as? Int ?? 0) },
                engineMilliseconds: ((object["stats"] as? [String: Any])?["engine_ms"] as? Double) ?? 0, worker: name,
                engine: Self.stepStats((object["stats"] as? [String: Any])?["engine"]))
            post(.finished(batchID: batchID, attempt: attempt, payload: payload, stats: stats), gen)
        case "failed":
            let code = FailureCode(rawValue: object["code"] as? String ?? "") ?? .engineError
            post(.failed(batchID: batchID, attempt: attempt, code: code, retryable: object["retryable"] as? Bool ?? code.retryableByDefault,
                         message: object["message"] as? String ?? "engine reported failure"), gen)
        case "fatal":
            gen.fatal = (FailureCode(rawValue: object["code"] as? String ?? "") ?? .engineDead, object["message"] as? String ?? "fatal engine error")
        default:
            logger.warning("engine sent an unknown message type", metadata: ["type": "\(type)"])
        }
    }

    /// A continuously batching engine's `stats.engine` (capacity, steps, sequence_steps, occupancy), as sent.
    static func stepStats(_ value: Any?) -> EngineStepStats? {
        guard let object = value as? [String: Any], let capacity = object["capacity"] as? Int,
              let steps = object["steps"] as? Int, let sequenceSteps = object["sequence_steps"] as? Int else { return nil }
        return EngineStepStats(capacity: capacity, steps: steps, sequenceSteps: sequenceSteps, occupancy: object["occupancy"] as? Double)
    }

    /// The engine's event pipe closed: make sure the group is gone, then say why it died.
    func ended(_ gen: Generation) {
        guard let child = gen.child else { return }
        var status = child.wait(timeoutSeconds: gen.stopping ? hooks.stopGraceSeconds + 2 : 5)
        if status == nil {
            child.signalGroup(SIGKILL)
            status = child.wait(timeoutSeconds: 10)
        }
        child.signalGroup(SIGKILL) // anything it started
        gen.outbox.close()
        if gen.stopping { return }
        let (code, message) = classify(status, gen)
        logger.error("engine ended", metadata: ["engine": "\(name)", "status": "\(status.map { "\($0)" } ?? "unknown")", "code": "\(code.rawValue)"])
        post(.died(code: code, message: message), gen)
    }

    /// Why the engine died: its own `fatal` word, else what its last output says, else how it ended.
    func classify(_ status: ExitStatus?, _ gen: Generation) -> (FailureCode, String) {
        let how = status.map { "\($0)" } ?? "did not exit"
        let last = gen.lastLines.last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? ""
        if let fatal = gen.fatal { return (fatal.code, "\(fatal.message) (engine \(how))") }
        let text = gen.lastLines.joined(separator: "\n").lowercased()
        if text.contains("out of memory") || text.contains("outofmemoryerror") {
            return (.oom, "the engine ran out of memory (\(how)): \(last)")
        }
        if !gen.ready { return (.startupFailed, "the engine \(how) before it was ready" + (last.isEmpty ? "" : ": \(last)")) }
        return (.engineDead, "the engine \(how)" + (last.isEmpty ? "" : "; last output: \(last)"))
    }
}
