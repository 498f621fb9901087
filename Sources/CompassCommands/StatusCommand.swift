import ArgumentParser
import CompassBroker
import CompassClient
import Foundation

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the broker's pools, workers and producer sessions.")

    @Option(help: "The broker's frontend endpoint.") var broker = "tcp://127.0.0.1:5555"
    @Flag(help: "Print the raw STATUS document as JSON.") var json = false
    @Flag(help: "Refresh every second until Ctrl-C.") var watch = false
    @Option(help: "Seconds to wait for the broker.") var timeout: Double = 5
    @OptionGroup var curve: CurveClientOptions

    func run() async throws {
        var options = ClientOptions(broker: broker)
        options.heartbeatMilliseconds = 1000
        options.curve = try curve.load("compass status")
        let client = try CompassClient(options: options)
        defer { client.close() }
        repeat {
            let document: [UInt8]
            do {
                document = try await client.status(timeoutSeconds: timeout)
            } catch ClientError.timedOut {
                throw fail("compass status", "no answer from the broker at \(broker) within \(timeout) s (is it running?)")
            } catch {
                throw fail("compass status", "\(error)")
            }
            if json {
                print(String(decoding: document, as: UTF8.self))
            } else {
                let status = try JSONDecoder().decode(BrokerStatus.self, from: Data(document))
                if watch { print("\u{1b}[H\u{1b}[2J", terminator: "") }
                print(watch ? fitted(StatusTable.render(status).components(separatedBy: "\n"), columns: terminalColumns()) : StatusTable.render(status))
            }
            if watch { try await Task.sleep(nanoseconds: 1_000_000_000) }
        } while watch
    }
}

/// The terminal view of a STATUS document.
enum StatusTable {
    static func render(_ s: BrokerStatus) -> String {
        var out = ["compass broker \(s.version) (protocol \(s.protocolVersion)), up \(formatDuration(s.uptimeSeconds))" +
                   (s.accepting ? "" : ", SHUTTING DOWN"),
                   "  frontend \(s.frontend)   backend \(s.backend)", ""]
        let poolWidths = [16, 8, 10, 9, 9, 10, 8, 9, 6, 10]
        out.append(row(["POOL", "QUEUED", "REQUESTS", "RUNNING", "WORKERS", "DONE", "FAILED", "RETRIED", "BUSY", "REQ/S"], poolWidths))
        for p in s.scheduler.pools {
            let rate = s.requestsPerSecond?[p.name].map { formatRate($0) } ?? "-"
            out.append(row([p.name, "\(p.queuedBatches)", "\(p.queuedRequests)", "\(p.runningBatches)", "\(p.workers)",
                            "\(p.counters.completed)", "\(p.counters.failed)", "\(p.counters.retried)", "\(p.counters.rejectedBusy)", rate], poolWidths))
        }
        out.append("")
        let workerWidths = [22, 12, 10, 4, 14, 16, 9, 7, 24, 8, 9, 8]
        out.append(row(["WORKER", "POOL", "ENGINE", "TP", "GPUS", "HOST:PID", "STATE", "CREDIT", "RUNNING", "DONE", "RESTARTS", "UP"], workerWidths))
        for w in s.scheduler.workers {
            let info = s.workers.first { $0.id == w.id }
            let caps = info?.capabilities
            let gpus = (info?.gpus ?? caps?.gpus ?? []).map { g in
                var text = "\(g.index)"
                if let used = g.memoryUsedMiB, let total = g.memoryTotalMiB { text += " \(used)/\(total)MiB" }
                if let util = g.utilizationPercent { text += " \(util)%" }
                return text
            }.joined(separator: "; ")
            // The first batch (with its progress) and how many more: the column keeps its width.
            var running = w.running.first.map { id in
                if let p = w.progress[id], p.count == 2 { return "\(id) \(p[0])/\(p[1])" }
                return id
            } ?? ""
            if w.running.count > 1 { running += " +\(w.running.count - 1)" }
            let state = w.draining ? "draining" : (w.running.isEmpty ? "idle" : "busy")
            out.append(row([w.id, w.pool, caps?.engine ?? "?", "\(caps?.tp ?? 0)",
                            gpus.isEmpty ? "-" : gpus, caps.map { "\($0.host):\($0.pid)" } ?? "?", state, "\(w.credit)",
                            running.isEmpty ? "-" : running, "\(w.completed)", "\(info?.engineRestarts ?? 0)",
                            formatDuration(Double(w.uptimeMilliseconds) / 1000)], workerWidths))
        }
        if !s.scheduler.sessions.isEmpty {
            out.append("")
            let sessionWidths = [44, 11, 12]
            out.append(row(["SESSION", "CONNECTED", "OUTSTANDING"], sessionWidths))
            for session in s.scheduler.sessions {
                out.append(row([session.session, session.connected ? "yes" : "no", "\(session.outstanding)"], sessionWidths))
            }
        }
        return out.joined(separator: "\n")
    }

    static func row(_ cells: [String], _ widths: [Int]) -> String {
        cells.enumerated().map { i, cell in
            let w = i < widths.count ? widths[i] : 10
            return cell.count >= w ? cell + " " : cell + String(repeating: " ", count: w - cell.count)
        }.joined().trimmingCharacters(in: .whitespaces)
    }
}
