import Hummingbird

/// Hummingbird's own errors (no such route, body too large...) in OpenAI's error shape.
struct ErrorShapeMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError {
            let message = error.status == .notFound ? "No route \(request.method) \(request.uri.path)" : "\(error)"
            return APIError(status: error.status, message: message, type: "invalid_request_error",
                            code: error.status == .notFound ? "unknown_url" : nil).response
        }
    }
}
