import CompassLauncher
import CompassTopology
import Testing

@Suite("the gateway: section of topology.yaml")
struct TopologyGatewayTests {
    @Test func aGatewaySectionAddsTheGatewayProcess() throws {
        let t = try Topology.parse("""
        broker:
          frontend: tcp://*:5555
        pools:
          default: {}
        gateway:
          listen: 0.0.0.0:8080
          max_batch: 64
          max_wait_ms: 10
          deadline_ms: 60000
          data_dir: /var/lib/compass-gateway
        """)
        #expect(t.gateway?.listen == "0.0.0.0:8080")
        let gateway = try #require(Plan.processes(for: t, binDirectory: "/bin").last)
        #expect(gateway.role == .gateway && gateway.name == "gateway")
        #expect(gateway.executable == "/bin/compass")
        #expect(gateway.arguments == ["gateway", "--broker", "tcp://127.0.0.1:5555", "--listen", "0.0.0.0:8080", "--log-level", "info",
                                      "--max-batch", "64", "--max-wait-ms", "10", "--deadline-ms", "60000",
                                      "--data-dir", "/var/lib/compass-gateway"])
    }

    @Test func withSecurityTheGatewayGetsTheBrokerKeyAndItsOwn() throws {
        let t = try Topology.parse("""
        security:
          broker_key: /keys/broker.key
          allow_producers: /keys/producers
        pools:
          default: {}
        gateway:
          curve_key: /keys/gateway.key
        """)
        let gateway = try #require(Plan.processes(for: t, binDirectory: "/bin").last)
        #expect(gateway.role == .gateway)
        #expect(gateway.arguments.suffix(4) == ["--curve-server-key", "/keys/broker.key", "--curve-key", "/keys/gateway.key"])
    }

    @Test func noSectionNoGatewayAndAnEmptyOneTakesTheDefaults() throws {
        let none = try Topology.parse("pools:\n  default: {}\n")
        #expect(none.gateway == nil)
        #expect(!Plan.processes(for: none, binDirectory: "/bin").contains { $0.role == .gateway })
        let bare = try Topology.parse("pools:\n  default: {}\ngateway:\n")
        #expect(bare.gateway?.listen == "127.0.0.1:8000")
        #expect(Plan.processes(for: bare, binDirectory: "/bin").last?.arguments.contains("127.0.0.1:8000") == true)
    }

    @Test func badSettingsAreReportedWithTheirLine() {
        do {
            _ = try Topology.parse("pools:\n  default: {}\ngateway:\n  listen: nowhere\n  max_batch: 0\n  colour: blue\n", file: "t.yaml")
            Issue.record("expected problems")
        } catch let error as TopologyError {
            let text = error.description
            #expect(text.contains("t.yaml:4") && text.contains("gateway.listen must be HOST:PORT"))
            #expect(text.contains("gateway.max_batch must be a positive integer"))
            #expect(text.contains("gateway.colour is not a known setting"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
