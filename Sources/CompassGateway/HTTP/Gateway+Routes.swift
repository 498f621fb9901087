import CompassProtocol
import Hummingbird

/// The HTTP routes, each to the handler of its concern.
extension Gateway {
    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorShapeMiddleware())
        router.get("/health") { _, _ in self.health() }
        let v1 = router.group("v1")
        if let key = options.apiKey { v1.add(middleware: APIKeyMiddleware(key: key)) }
        v1.get("models") { _, _ in await self.models() }
        v1.get("models/:model") { _, context in await self.model(context.parameters.get("model") ?? "") }
        v1.post("completions") { request, _ in await self.serve(request, .completions) }
        v1.post("chat/completions") { request, _ in await self.serve(request, .chat) }
        v1.post("files") { request, _ in await self.answer { try await self.upload(request) } }
        v1.get("files") { request, _ in
            let purpose = request.uri.queryParameters.get("purpose")
            return Gateway.json(.object([("object", "list"), ("data", .array(self.files.list(purpose: purpose).map(\.json))),
                                         ("has_more", false)]))
        }
        v1.get("files/:id") { _, context in
            await self.answer { Gateway.json(try self.file(context.parameters.get("id")).json) }
        }
        v1.delete("files/:id") { _, context in
            await self.answer {
                let file = try self.file(context.parameters.get("id"))
                _ = self.files.delete(file.id)
                return Gateway.json(.object([("id", .string(file.id)), ("object", "file"), ("deleted", true)]))
            }
        }
        v1.get("files/:id/content") { _, context in
            await self.answer {
                let file = try self.file(context.parameters.get("id"))
                let body = try await FileIO().loadFile(path: self.files.contentPath(file.id), context: context)
                return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: body)
            }
        }
        v1.post("batches") { request, _ in
            await self.answer { Gateway.json(try self.jobs.create(try await self.readJSON(request)).json) }
        }
        v1.get("batches") { request, _ in self.listBatches(request) }
        v1.get("batches/:id") { _, context in
            await self.answer {
                let id = context.parameters.get("id") ?? ""
                guard let record = self.jobs.get(id) else { throw APIError.notFound("No batch with id '\(id)'", code: "batch_not_found") }
                return Gateway.json(record.json)
            }
        }
        v1.post("batches/:id/cancel") { _, context in
            await self.answer { Gateway.json(try self.jobs.cancel(context.parameters.get("id") ?? "").json) }
        }
        return router
    }
}
