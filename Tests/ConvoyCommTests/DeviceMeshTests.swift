import ConvoyComm
import ConvoyTensor
import Testing

@Suite("DeviceMesh")
struct DeviceMeshTests {
    /// The documented rank order for dp = pp = tp = 2, written out: tp varies fastest, then dp, then pp.
    static let order222: [(rank: Int, dp: Int, pp: Int, tp: Int)] = [
        (0, 0, 0, 0),
        (1, 0, 0, 1),
        (2, 1, 0, 0),
        (3, 1, 0, 1),
        (4, 0, 1, 0),
        (5, 0, 1, 1),
        (6, 1, 1, 0),
        (7, 1, 1, 1),
    ]

    @Test func rankOrderFor2x2x2() throws {
        let mesh = try DeviceMesh(dp: 2, pp: 2, tp: 2)
        #expect(mesh.size == 8)
        #expect(mesh.axes == [.tp, .dp, .pp] && DeviceMesh.defaultOrder == [.tp, .dp, .pp])
        for row in Self.order222 {
            let coordinates = mesh.coordinates(of: row.rank)
            #expect(coordinates.dp == row.dp && coordinates.pp == row.pp && coordinates.tp == row.tp,
                    "rank \(row.rank) has coordinates \(coordinates)")
            #expect(mesh.rank(dp: row.dp, pp: row.pp, tp: row.tp) == row.rank)
        }
    }

    static let shapes: [(dp: Int, pp: Int, tp: Int)] = [(1, 1, 1), (2, 1, 1), (1, 3, 1), (1, 1, 4), (2, 3, 4), (3, 2, 1), (4, 1, 2), (1, 2, 3)]

    @Test func coordinatesAndRankAreInverse() throws {
        for shape in Self.shapes {
            let mesh = try DeviceMesh(dp: shape.dp, pp: shape.pp, tp: shape.tp)
            #expect(mesh.size == shape.dp * shape.pp * shape.tp)
            var seen = Set<Int>()
            for rank in 0..<mesh.size {
                let c = mesh.coordinates(of: rank)
                #expect((0..<shape.dp).contains(c.dp) && (0..<shape.pp).contains(c.pp) && (0..<shape.tp).contains(c.tp))
                #expect(mesh.rank(dp: c.dp, pp: c.pp, tp: c.tp) == rank, "\(mesh): rank \(rank) → \(c)")
                // The documented formula.
                #expect(rank == (c.pp * shape.dp + c.dp) * shape.tp + c.tp)
                seen.insert(rank)
            }
            for dp in 0..<shape.dp {
                for pp in 0..<shape.pp {
                    for tp in 0..<shape.tp {
                        let c = mesh.coordinates(of: mesh.rank(dp: dp, pp: pp, tp: tp))
                        #expect(c.dp == dp && c.pp == pp && c.tp == tp)
                    }
                }
            }
            #expect(seen.count == mesh.size)
        }
    }

    @Test func ranksAlongAxesFor2x2x2() throws {
        let mesh = try DeviceMesh(dp: 2, pp: 2, tp: 2)
        #expect(mesh.ranksAlong(.tp, through: 5) == [4, 5])
        #expect(mesh.ranksAlong(.dp, through: 5) == [5, 7])
        #expect(mesh.ranksAlong(.pp, through: 5) == [1, 5])
        #expect(mesh.ranksAlong(.tp, through: 2) == [2, 3])
        #expect(mesh.ranksAlong(.dp, through: 2) == [0, 2])
        #expect(mesh.ranksAlong(.pp, through: 2) == [2, 6])
    }

    @Test func ranksAlongAxesForAnAsymmetricMesh() throws {
        // dp = 3, pp = 2, tp = 2: rank = (pp·3 + dp)·2 + tp; rank 7 is (dp 0, pp 1, tp 1).
        let mesh = try DeviceMesh(dp: 3, pp: 2, tp: 2)
        #expect(mesh.ranksAlong(.dp, through: 7) == [7, 9, 11])
        #expect(mesh.ranksAlong(.pp, through: 7) == [1, 7])
        #expect(mesh.ranksAlong(.tp, through: 7) == [6, 7])
        #expect(mesh.ranksAlong(.dp, through: 0) == [0, 2, 4])
    }

    @Test func groupsAlongEachAxisPartitionTheWorld() throws {
        for shape in Self.shapes {
            let mesh = try DeviceMesh(dp: shape.dp, pp: shape.pp, tp: shape.tp)
            for axis in MeshAxis.required {
                var groupByIndex: [Int: [Int]] = [:]
                for rank in 0..<mesh.size {
                    let members = mesh.ranksAlong(axis, through: rank)
                    #expect(members.count == mesh.size(of: axis))
                    #expect(members[mesh.position(along: axis, of: rank)] == rank)
                    let index = mesh.groupIndex(along: axis, of: rank)
                    #expect((0..<(mesh.size / mesh.size(of: axis))).contains(index))
                    if let known = groupByIndex[index] {
                        #expect(known == members, "\(mesh) axis \(axis): group \(index) is \(known) and \(members)")
                    } else {
                        groupByIndex[index] = members
                    }
                }
                #expect(groupByIndex.count == mesh.size / mesh.size(of: axis))
                #expect(groupByIndex.values.flatMap { $0 }.sorted() == Array(0..<mesh.size))
            }
        }
    }

    @Test func worldSizeMismatchIsRejectedWithAFix() {
        #expect(throws: ConvoyError.invalidConfiguration("world size 6 is not the mesh size tp 2 · dp 2 · pp 2 = 8; change --dp/--pp/--tp or the number of ranks")) {
            try DeviceMesh(dp: 2, pp: 2, tp: 2, worldSize: 6)
        }
        #expect(throws: Never.self) { try DeviceMesh(dp: 2, pp: 2, tp: 2, worldSize: 8) }
        #expect(throws: ConvoyError.self) { try DeviceMesh(dp: 0, pp: 2, tp: 2) }
        #expect(throws: ConvoyError.self) { try DeviceMesh(dp: 1, pp: 1, tp: -1) }
    }

    @Test func groupsOfAWorldOfTheWrongSizeFailOnEveryRank() throws {
        let mesh = try DeviceMesh(dp: 2, pp: 2, tp: 2)
        let outcomes = try LocalWorld.run(size: 6) { world -> String? in
            do {
                _ = try mesh.groups(of: world)
                return nil
            } catch {
                return "\(error)"
            }
        }
        for outcome in outcomes {
            #expect(outcome == "invalid configuration: world size 6 is not the mesh size tp 2 · dp 2 · pp 2 = 8; change --dp/--pp/--tp or the number of ranks")
        }
    }

    /// What one rank saw of its group along one axis.
    struct AxisView: Sendable, Equatable {
        let name: String
        let size: Int
        let rank: Int
        let worldRanks: [Int]
        /// All-reduce (sum) of [world rank, 1] over the group.
        let reduced: [Float]
    }

    static func meshGroupViews(_ mesh: DeviceMesh) throws -> [[MeshAxis: AxisView]] {
        try LocalWorld.run(size: mesh.size) { world in
            let groups = try mesh.groups(of: world)
            var views: [MeshAxis: AxisView] = [:]
            for axis in MeshAxis.required {
                let group = groups[axis]
                let values = Tensor(shape: [2], values: [Float(world.rank), 1])
                try group.allReduce(values)
                views[axis] = AxisView(name: group.name, size: group.size, rank: group.rank, worldRanks: group.worldRanks,
                                       reduced: values.toArray())
            }
            return views
        }
    }

    @Test(arguments: [(2, 2, 2), (3, 2, 1), (1, 2, 3)])
    func eachRankGetsItsGroupAlongEveryAxis(dp: Int, pp: Int, tp: Int) throws {
        let mesh = try DeviceMesh(dp: dp, pp: pp, tp: tp)
        let views = try Self.meshGroupViews(mesh)
        #expect(views.count == mesh.size)
        for (worldRank, rankViews) in views.enumerated() {
            for axis in MeshAxis.required {
                let view = try #require(rankViews[axis])
                let expectedRanks = mesh.ranksAlong(axis, through: worldRank)
                #expect(view.name == axis.rawValue)
                #expect(view.worldRanks == expectedRanks, "world rank \(worldRank), axis \(axis)")
                #expect(view.size == mesh.size(of: axis))
                #expect(view.rank == mesh.position(along: axis, of: worldRank))
                #expect(view.reduced == [Float(expectedRanks.reduce(0, +)), Float(expectedRanks.count)])
            }
        }
    }

    @Test func groupsFor2x2x2AreTheSpelledOutOnes() throws {
        let mesh = try DeviceMesh(dp: 2, pp: 2, tp: 2)
        let views = try Self.meshGroupViews(mesh)
        let expectedTP = [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5], [6, 7], [6, 7]]
        let expectedDP = [[0, 2], [1, 3], [0, 2], [1, 3], [4, 6], [5, 7], [4, 6], [5, 7]]
        let expectedPP = [[0, 4], [1, 5], [2, 6], [3, 7], [0, 4], [1, 5], [2, 6], [3, 7]]
        for worldRank in 0..<8 {
            #expect(views[worldRank][.tp]?.worldRanks == expectedTP[worldRank])
            #expect(views[worldRank][.dp]?.worldRanks == expectedDP[worldRank])
            #expect(views[worldRank][.pp]?.worldRanks == expectedPP[worldRank])
            // The tp all-reduce of world ranks gives the sum of the tp group's world ranks.
            #expect(views[worldRank][.tp]?.reduced.first == Float(expectedTP[worldRank].reduce(0, +)))
            #expect(views[worldRank][.tp]?.rank == worldRank % 2)
        }
    }

    /// Every axis order of (tp, dp, pp) and every shape of 1–64 ranks: along each axis the groups partition the
    /// world, every rank is in exactly one group per axis, and rank ↔ coordinates round-trips.
    @Test func everyOrderAndShapeUpTo64RanksPartitionsTheWorld() throws {
        let orders: [[MeshAxis]] = [[.tp, .dp, .pp], [.tp, .pp, .dp], [.dp, .tp, .pp], [.dp, .pp, .tp], [.pp, .tp, .dp], [.pp, .dp, .tp]]
        var meshes = 0
        for world in 1...64 {
            for tp in 1...world where world % tp == 0 {
                for pp in 1...(world / tp) where (world / tp) % pp == 0 {
                    let dp = world / tp / pp
                    for order in orders {
                        let mesh = try DeviceMesh(order: order, sizes: [.tp: tp, .dp: dp, .pp: pp])
                        #expect(mesh.size == world)
                        #expect(mesh.axes == order)
                        for axis in order {
                            let groups = mesh.groups(along: axis)
                            #expect(groups.count == world / mesh.size(of: axis))
                            #expect(groups.allSatisfy { $0.count == mesh.size(of: axis) })
                            #expect(groups.flatMap { $0 }.sorted() == Array(0..<world), "\(mesh) along \(axis)")
                            for rank in 0..<world {
                                let index = mesh.groupIndex(along: axis, of: rank)
                                #expect(groups[index][mesh.position(along: axis, of: rank)] == rank)
                                #expect(groups.filter { $0.contains(rank) }.count == 1)
                            }
                        }
                        for rank in 0..<world {
                            let coordinates = Dictionary(uniqueKeysWithValues: order.map { ($0, mesh.coordinate(of: rank, along: $0)) })
                            #expect(mesh.rank(at: coordinates) == rank)
                        }
                        meshes += 1
                    }
                }
            }
        }
        #expect(meshes > 1000)
    }

    /// Megatron-Core's documented example: 16 ranks, tensor-parallel 2, pipeline-parallel 4 (so dp 2) in its
    /// default order tp-dp-pp gives 8 tensor groups [g0, g1] …, 4 pipeline groups [g0, g4, g8, g12] … and
    /// 8 data groups [g0, g2], [g1, g3], [g4, g6] ….
    @Test func megatronSixteenRankExampleGivesMegatronsGroups() throws {
        let mesh = try DeviceMesh(order: DeviceMesh.parseOrder("tp-dp-pp"), sizes: [.tp: 2, .pp: 4, .dp: 2])
        #expect(Set(mesh.groups(along: .tp)) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]])
        #expect(Set(mesh.groups(along: .pp)) == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]])
        #expect(Set(mesh.groups(along: .dp)) == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]])
    }

    @Test func ordersWithMoreAxesAndBadOrdersAreHandled() throws {
        let mesh = try DeviceMesh(order: DeviceMesh.parseOrder("tp-cp-dp-pp"), sizes: [.tp: 2, .cp: 2, .dp: 2])
        #expect(mesh.size == 8)
        #expect(mesh.size(of: .cp) == 2)
        #expect(mesh.ranksAlong(.cp, through: 1) == [1, 3])
        // An order that leaves out a required axis gets it appended with size 1.
        let short = try DeviceMesh(order: [.dp], sizes: [.dp: 4])
        #expect(short.axes == [.dp, .tp, .pp])
        #expect(throws: ConvoyError.self) { try DeviceMesh.parseOrder("tp--pp") }
        #expect(throws: ConvoyError.self) { try DeviceMesh(order: [.tp, .tp, .dp, .pp], sizes: [:]) }
        #expect(throws: ConvoyError.self) { try DeviceMesh(order: ["xp", .dp, .pp], sizes: [:]) }
        #expect(throws: ConvoyError.self) { try DeviceMesh(order: [.tp, .dp, .pp], sizes: [.cp: 2]) }
    }
}
