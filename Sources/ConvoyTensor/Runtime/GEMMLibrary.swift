import Foundation

/// The library Convoy's GEMMs run on (see ``BLAS``).
///
/// Both libraries are linked, and the choice is made at run time: SwiftPM has no optional dependencies, so
/// a build-time switch would mean two package manifests, and loading oneDNN with `dlopen` would give up the
/// type-checked C API. `scripts/install-dependencies` installs both. Unless `CONVOY_GEMM` names one, the
/// choice follows the CPU (``preferred``): oneDNN where it has AVX-512 kernels, OpenBLAS elsewhere. oneDNN
/// detects the CPU itself, so the default never depends on `OPENBLAS_CORETYPE`, which Debian's OpenBLAS
/// 0.3.21 needs on Zen 5.
public enum GEMMLibrary: String, Sendable, CaseIterable {
    /// OpenBLAS's `cblas_sgemm`; bf16 GEMMs widen their operands to fp32 first.
    case openBLAS = "openblas"
    /// oneDNN: `dnnl_sgemm` for fp32, the matmul primitive for bf16.
    case oneDNN = "onednn"

    /// The environment variable that overrides the default library.
    public static let environmentVariable = "CONVOY_GEMM"

    /// The library chosen when `CONVOY_GEMM` is unset: oneDNN where its kernels use AVX-512 (measured
    /// 2.0–2.3× OpenBLAS in fp32 on Zen 5, and the only bf16 GEMM); OpenBLAS on AVX2-only CPUs, where the two
    /// measure level (`convoy bench gemm` on an AVX2-only Zen VM: oneDNN fp32 0.85–1.26× OpenBLAS) and
    /// oneDNN 2.x has no bf16 matmul anyway.
    public static var preferred: GEMMLibrary { OneDNN.isAvailable && OneDNN.hasAVX512 ? .oneDNN : .openBLAS }

    /// The library named by `CONVOY_GEMM`, or ``preferred`` when it is unset or empty.
    ///
    /// - Throws: ``ConvoyError/invalidConfiguration(_:)`` when `CONVOY_GEMM` names no library.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GEMMLibrary {
        guard let text = environment[environmentVariable], !text.isEmpty else { return preferred }
        guard let library = GEMMLibrary(rawValue: text.lowercased()) else {
            let names = allCases.map(\.rawValue).joined(separator: " or ")
            throw ConvoyError.invalidConfiguration("\(environmentVariable)=\(text) names no GEMM library: set it to \(names), or unset it for this CPU's default (\(preferred.rawValue))")
        }
        return library
    }

    /// The library GEMMs use unless a caller names one: read once from the environment; OpenBLAS when
    /// oneDNN cannot create its CPU engine.
    public static let active: GEMMLibrary = {
        let requested: GEMMLibrary
        do { requested = try fromEnvironment() } catch { preconditionFailure("\(error)") }
        return requested == .oneDNN && !OneDNN.isAvailable ? .openBLAS : requested
    }()

    /// The library's name as people write it.
    public var name: String {
        switch self {
        case .openBLAS: return "OpenBLAS"
        case .oneDNN: return "oneDNN"
        }
    }

    /// The library's version.
    public var version: String {
        switch self {
        case .openBLAS: return OpenBLAS.version
        case .oneDNN: return OneDNN.version
        }
    }

    /// The instruction set the library's fp32 kernels use on this CPU (OpenBLAS: the core it selected).
    public var isa: String {
        switch self {
        case .openBLAS: return OpenBLAS.coreName
        case .oneDNN: return OneDNN.isa
        }
    }

    /// The kernel a bf16 GEMM of a typical size runs (oneDNN's implementation name, e.g.
    /// `brg:avx512_core_bf16`), or how ``BLAS/gemmBF16(transposeA:transposeB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:library:pool:)``
    /// falls back (operands widened to fp32, then sgemm).
    public var bf16Kernel: String {
        let widened = "fp32 sgemm on widened operands"
        switch self {
        case .openBLAS: return widened
        case .oneDNN: return OneDNN.supportsBF16 ? OneDNN.bf16Implementation : "none in oneDNN on this CPU, so \(widened)"
        }
    }
}
