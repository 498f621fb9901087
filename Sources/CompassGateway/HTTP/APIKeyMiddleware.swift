import Hummingbird

/// Requires `Authorization: Bearer <key>` (compared in constant time).
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: [UInt8]

    init(key: String) { self.key = Array(key.utf8) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else { return APIError.unauthorized.response }
        let token = String(header.dropFirst("Bearer ".count)).trimmingCharacters(in: .whitespaces)
        let given = [UInt8](token.utf8)
        var difference = given.count == key.count ? 0 : 1
        for i in 0..<min(given.count, key.count) { difference |= Int(given[i] ^ key[i]) }
        guard difference == 0 else { return APIError.unauthorized.response }
        return try await next(request, context)
    }
}
