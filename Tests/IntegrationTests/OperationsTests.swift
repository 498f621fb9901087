import CompassBroker
import CompassClient
import CompassProtocol
import Foundation
import Testing

@Suite("Operations: status, metrics, logs, launcher", .serialized, .timeLimit(.minutes(3)))
struct OperationsTests {
    @Test("compass status --json reports the numbers of a run that just happened")
    func statusJSONMatchesTheRun() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir)
        _ = try writePrompts(dir.file("in.jsonl"), count: 320)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "16",
                                             "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        #expect(try await submit.waitForExit().isSuccess)
        let status = try Spawned("compass", ["status", "--broker", broker.frontend, "--json"], in: dir, name: "status")
        #expect(try await status.waitForExit(timeout: 20).isSuccess, "\(status.log())")
        let document = try JSONDecoder().decode(BrokerStatus.self, from: Data(status.log().utf8))
        let pool = try #require(document.scheduler.pools.first { $0.name == "default" })
        #expect(pool.counters.submitted == 20)
        #expect(pool.counters.completed == 20)
        #expect(pool.counters.completedRequests == 320)
        #expect(pool.counters.dispatched == 20)
        #expect(pool.queuedBatches == 0 && pool.runningBatches == 0)
        #expect(pool.workers == 2)
        #expect(document.scheduler.workers.map(\.completed).reduce(0, +) == 20)
        #expect(Set(document.workers.compactMap { $0.capabilities?.pid }) == Set(workers.map(\.pid)))
        let table = try Spawned("compass", ["status", "--broker", broker.frontend], in: dir, name: "table")
        #expect(try await table.waitForExit(timeout: 20).isSuccess)
        #expect(table.log().contains("default") && table.log().contains("WORKER") && table.log().contains("REQ/S"))
    }

    @Test("The Prometheus endpoint's counters move as batches complete")
    func metricsMoveDuringARun() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--metrics", "127.0.0.1:0"])
        let line = try await broker.process.waitForLog("compass-broker metrics http://")
        let url = String(line.split(separator: " ").last!)
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: ["--engine-arg", "batch_ms=100"])
        try await worker.waitForLog("registered with broker")
        func scrape() throws -> [String: Double] {
            let text = try httpGet(url)
            var values: [String: Double] = [:]
            for l in text.split(separator: "\n") where !l.hasPrefix("#") {
                let parts = l.split(separator: " ")
                if parts.count == 2, let v = Double(parts[1]) { values[String(parts[0])] = v }
            }
            return values
        }
        let client = try testClient(broker.frontend)
        defer { client.close() }
        func submit(_ range: Range<Int>) async throws {
            let batches = range.map { i in Task { try await client.submit([InferenceRequest(customID: "m\(i)", prompt: "metric \(i)")], pool: "default") } }
            for b in batches { _ = try await b.value }
        }
        let completed = #"compass_batches_completed_total{pool="default"}"#
        // Two halves, each awaited: the counter is seen at 6 between them and at 12 after, so it
        // moves while the broker runs (not only once at the end), whatever the machine's speed.
        try await submit(0..<6)
        try await eventually("the first six batches to be counted") { (try scrape())[completed] == 6 }
        try await submit(6..<12)
        try await eventually("every batch to be counted") { (try scrape())[completed] == 12 }
        let values = try scrape()
        #expect(values[#"compass_requests_completed_total{pool="default"}"#] == 12)
        #expect(values[#"compass_batch_latency_count{pool="default"}"#] == 12)
        #expect(values[#"compass_workers{pool="default"}"#] == 1)
    }

    @Test("compass up holds back a crash-looping worker and reports it")
    func crashLoopIsHeldBack() async throws {
        let dir = TempDir()
        try """
        broker:
          frontend: ipc://\(dir.path)/fe
          backend: ipc://\(dir.path)/be
        pools:
          good:
            workers: 1
          broken:
            workers: 1
            engine_args:
              no_such_setting: 1
        """.write(toFile: dir.file("t.yaml"), atomically: true, encoding: .utf8)
        let up = try Spawned("compass", ["up", dir.file("t.yaml"), "--crash-loop-count", "3", "--crash-loop-seconds", "60", "--no-view"],
                             in: dir, name: "up")
        try await up.waitForLog("crash-looping; holding it back", timeout: 30)
        #expect(up.log().components(separatedBy: "process exited; restarting").count - 1 == 2)
        #expect(up.log().contains("process=broken.0"))
        up.child.signal(SIGINT)
        #expect(try await up.waitForExit(timeout: 30).isSuccess)
    }

    @Test("compass up with a gateway: section serves HTTP; Ctrl-C stops the gateway too, first")
    func upRunsAndStopsTheGateway() async throws {
        let dir = TempDir()
        try """
        broker:
          frontend: ipc://\(dir.path)/fe
          backend: ipc://\(dir.path)/be
        pools:
          default:
            workers: 1
        gateway:
          listen: 127.0.0.1:0
        """.write(toFile: dir.file("t.yaml"), atomically: true, encoding: .utf8)
        let up = try Spawned("compass", ["up", dir.file("t.yaml"), "--no-view"], in: dir, name: "up")
        let started = try await up.waitForLog("process=gateway", timeout: 30)
        let gatewayPid = try #require(started.split(separator: " ").first { $0.hasPrefix("pid=") }.flatMap { Int32($0.dropFirst(4)) })
        let listening = try await up.waitForLog("compass gateway listening on http://127.0.0.1:", timeout: 30)
        let port = try #require(listening.split(separator: ":").dropFirst(2).first.flatMap { Int($0.prefix { $0.isNumber }) })
        try await eventually("the gateway to see the pool's worker") {
            (try? httpGet("http://127.0.0.1:\(port)/v1/models"))?.contains(#""workers":1"#) == true
        }
        up.child.signal(SIGINT)
        #expect(try await up.waitForExit(timeout: 30).isSuccess, "\(up.log())")
        #expect(kill(gatewayPid, 0) != 0, "the gateway \(gatewayPid) outlived compass up")
        let log = up.log()
        let gatewayStop = try #require(log.range(of: "gateway stopped"), "\(log)")
        let workerStop = try #require(log.range(of: "SIGTERM: draining"), "\(log)")
        #expect(gatewayStop.lowerBound < workerStop.lowerBound, "the gateway should stop before the workers")
    }

    @Test("--log-format json writes one JSON object per line")
    func jsonLogs() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--log-format", "json"])
        try await broker.process.waitForLog("broker ready")
        let lines = broker.process.log().split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(!lines.isEmpty)
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(object["level"] != nil && object["msg"] != nil && object["ts"] != nil)
        }
        #expect(lines.contains { $0.contains("\"msg\":\"broker ready\"") && $0.contains("\"heartbeat_ms\"") })
    }
}
