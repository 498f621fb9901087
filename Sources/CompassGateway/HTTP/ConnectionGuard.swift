import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// Sits after Hummingbird's HTTP/1 codec on each connection:
///
/// - a request body that falls behind its deadline (`ConnectionLimits`) closes the connection;
/// - a response that goes out while its request's body is still arriving (413 for a body past the
///   limit, 401 before an upload...) says `Connection: close` and closes the connection once written,
///   instead of reading the rest of a body nobody wants.
///
/// The idle limit itself is Hummingbird's (`HTTP1Channel.Configuration.idleTimeout`).
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let limits: ConnectionLimits
    let logger: Logger
    /// Between a request's head and its end.
    var readingBody = false
    var bodyStarted = NIODeadline.now()
    var received = 0
    var timer: Scheduled<Void>?
    var closeAfterResponse = false

    init(limits: ConnectionLimits, logger: Logger) {
        self.limits = limits
        self.logger = logger
    }

    /// When the body being read falls behind.
    var bodyDeadline: NIODeadline {
        let earned = Int64(received) * 1_000_000_000 / Int64(max(1, limits.minBodyBytesPerSecond))
        return bodyStarted + .milliseconds(limits.bodyGraceMilliseconds) + .nanoseconds(earned)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            readingBody = true
            bodyStarted = .now()
            received = 0
            schedule(context)
        case .body(let buffer):
            received += buffer.readableBytes
        case .end:
            readingBody = false
            cancelTimer()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var response) where readingBody:
            closeAfterResponse = true
            response.headerFields[.connection] = "close"
            context.write(wrapOutboundOut(.head(response)), promise: promise)
        case .end where closeAfterResponse:
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.cascade(to: promise)
            written.futureResult.whenComplete { _ in context.close(promise: nil) }
            context.writeAndFlush(data, promise: written)
        default:
            context.write(data, promise: promise)
        }
    }

    func schedule(_ context: ChannelHandlerContext) {
        cancelTimer()
        let deadline = bodyDeadline
        timer = context.eventLoop.scheduleTask(deadline: deadline) { [self] in
            timer = nil
            guard readingBody else { return }
            if NIODeadline.now() >= bodyDeadline {
                logger.info("closing a connection whose request body fell behind", metadata: [
                    "received_bytes": "\(received)", "remote": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
                context.close(promise: nil)
            } else {
                schedule(context)
            }
        }
    }

    func cancelTimer() {
        timer?.cancel()
        timer = nil
    }

    func handlerRemoved(context: ChannelHandlerContext) { cancelTimer() }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        context.fireChannelInactive()
    }
}
