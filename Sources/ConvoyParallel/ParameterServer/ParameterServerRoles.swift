import ConvoyTensor

/// Which ranks of one world are parameter servers and which are workers. By default the servers are the last
/// S ranks (`--ps-servers S`); a `[[placement]]` section with `role = "server"` may name them instead.
public struct ParameterServerRoles: Sendable, Equatable {
    public let worldSize: Int
    /// World ranks of the servers; server index s is `serverRanks[s]`.
    public let serverRanks: [Int]
    /// World ranks of the workers, ascending; worker index w is `workerRanks[w]`.
    public let workerRanks: [Int]

    /// - Throws: when there are no servers, a server rank is outside the world or repeated, or no worker is left.
    public init(worldSize: Int, servers: Int? = nil, serverRanks explicit: [Int]? = nil) throws {
        guard let count = servers ?? explicit?.count, count >= 1 else {
            throw ConvoyError.invalidConfiguration("parameter-server training needs at least one server; set --ps-servers S (S ≥ 1) or a [[placement]] with role = \"server\"")
        }
        guard count < worldSize else {
            throw ConvoyError.invalidConfiguration("--ps-servers \(count) leaves no worker in a world of \(worldSize) ranks; use fewer servers than ranks (S < world), or more ranks (Local: --dp W gives W + S threads)")
        }
        if let explicit, servers != nil, explicit.count != servers {
            throw ConvoyError.invalidConfiguration("[[placement]] role = \"server\" names \(explicit.count) servers but --ps-servers is \(servers!); drop one or make them agree")
        }
        let ranks = explicit ?? Array((worldSize - count)..<worldSize)
        guard Set(ranks).count == ranks.count, ranks.allSatisfy({ (0..<worldSize).contains($0) }) else {
            throw ConvoyError.invalidConfiguration("server ranks \(ranks) must be distinct ranks of the world 0..<\(worldSize)")
        }
        self.worldSize = worldSize
        serverRanks = ranks
        workerRanks = (0..<worldSize).filter { !ranks.contains($0) }
    }

    public var serverCount: Int { serverRanks.count }
    public var workerCount: Int { workerRanks.count }

    /// The server index of world rank `rank` (nil: a worker).
    public func serverIndex(ofRank rank: Int) -> Int? { serverRanks.firstIndex(of: rank) }
    /// The worker index of world rank `rank` (nil: a server).
    public func workerIndex(ofRank rank: Int) -> Int? { workerRanks.firstIndex(of: rank) }

    /// The server holding row `id` of any table: rows are dealt round-robin (id mod S), so every server holds
    /// about 1/S of every table and a hot range of ids spreads over all of them.
    public func server(ofRow id: Int32) -> Int { Int(id) % serverCount }
}
