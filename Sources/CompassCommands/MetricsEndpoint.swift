import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus

/// The broker's Prometheus endpoint: swift-metrics bootstrapped with Prometheus, served over HTTP
/// by Hummingbird on its own threads (the broker's poll loop never waits on it).
enum MetricsEndpoint {
    /// Bootstraps the metrics system and starts serving `GET /metrics` on `address` (HOST:PORT,
    /// port 0 picks one). Prints `compass-broker metrics http://HOST:PORT/metrics` once listening.
    /// Returns the task that serves it: the broker cancels it once its own run is over, so the
    /// endpoint answers while the broker drains (it takes no signals of its own) and stops with it.
    static func start(_ address: String, logger: Logger) throws -> Task<Void, Never> {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw CommandFailure(message: "--metrics must be HOST:PORT, e.g. 127.0.0.1:9464")
        }
        let host = String(address[..<colon])
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [.milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250),
                                                   .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
                                                   .seconds(30), .seconds(60), .seconds(300)]
        MetricsSystem.bootstrap(factory)
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "compass-broker"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                print("compass-broker metrics http://\(host):\(bound)/metrics")
                fflush(nil)
            },
            logger: Logger(label: "compass-metrics"))
        return Task.detached {
            do {
                try await app.runService(gracefulShutdownSignals: [])
            } catch is CancellationError {
            } catch {
                logger.critical("the metrics endpoint stopped", metadata: ["address": "\(address)", "error": "\(error)"])
            }
        }
    }
}
