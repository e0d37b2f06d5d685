// Loads the compiled Core ML model, builds the three image inputs, predicts on the Neural Engine,
// upscales every map to the contract's final size with Lanczos (vImage) and saves PNGs.
import Accelerate
import CoreML
import CoreGraphics
import Foundation
import ImageIO
import UniformTypeIdentifiers
import Vision

final class PBRPredictor {
    let contract: PBRContract
    private let model: MLModel

    /// - Parameters:
    ///   - modelURL: the compiled model (`PBRStudent.mlmodelc`; Xcode compiles the .mlpackage you add).
    ///   - contractURL: `contract.json` from the exporter.
    init(modelURL: URL, contractURL: URL) throws {
        contract = try PBRContract.load(from: contractURL)
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndNeuralEngine  // what the exporter's ANE report targets
        model = try MLModel(contentsOf: modelURL, configuration: config)
    }

    /// Predicts the four maps from three photos (any size; Core ML scales them to the input size).
    /// Returns planar float maps at `contract.finalSize`, keyed by output name.
    func predict(views: [CGImage]) throws -> [String: [[Float]]] {
        guard views.count == contract.inputNames.count else {
            throw PBRError.badInput("need \(contract.inputNames.count) views, got \(views.count)")
        }
        var features: [String: MLFeatureValue] = [:]
        for (name, image) in zip(contract.inputNames, views) {
            guard let constraint = model.modelDescription.inputDescriptionsByName[name]?.imageConstraint else {
                throw PBRError.badContract("the model has no image input named \(name)")
            }
            features[name] = try MLFeatureValue(cgImage: image, constraint: constraint, options: [
                .cropAndScale: VNImageCropAndScaleOption.scaleFill.rawValue,
            ])
        }
        let output = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        var maps: [String: [[Float]]] = [:]
        for name in contract.outputNames {
            guard let array = output.featureValue(for: name)?.multiArrayValue else {
                throw PBRError.badOutput("missing output \(name)")
            }
            let planes = Self.planes(of: array, channels: contract.outputChannels[name] ?? 1, side: contract.outputSize)
            maps[name] = planes.map { Self.lanczos($0, from: contract.outputSize, to: contract.finalSize) }
        }
        if var normal = maps["normal"] { Self.renormalize(&normal); maps["normal"] = normal }
        for name in ["albedo", "roughness", "metallic"] {
            maps[name] = maps[name]?.map { $0.map { min(max($0, 0), 1) } }
        }
        return maps
    }

    /// Writes albedo/roughness/metallic/normal.png (normal encoded as (n + 1) / 2) into `folder`.
    func save(_ maps: [String: [[Float]]], to folder: URL) throws {
        for (name, planes) in maps {
            let encoded = name == "normal" ? planes.map { $0.map { ($0 + 1) / 2 } } : planes
            try Self.writePNG(encoded, side: contract.finalSize, to: folder.appendingPathComponent("\(name).png"))
        }
    }

    // MARK: - helpers

    private static func planes(of array: MLMultiArray, channels: Int, side: Int) -> [[Float]] {
        let count = side * side
        var out = [[Float]](repeating: [Float](repeating: 0, count: count), count: channels)
        for c in 0..<channels {
            for i in 0..<count {
                out[c][i] = array[[0, NSNumber(value: c), NSNumber(value: i / side), NSNumber(value: i % side)]].floatValue
            }
        }
        return out
    }

    /// vImage's high-quality scaler is Lanczos-based.
    private static func lanczos(_ plane: [Float], from: Int, to: Int) -> [Float] {
        guard from != to else { return plane }
        var src = plane
        var dst = [Float](repeating: 0, count: to * to)
        src.withUnsafeMutableBytes { s in
            dst.withUnsafeMutableBytes { d in
                var sb = vImage_Buffer(data: s.baseAddress, height: vImagePixelCount(from), width: vImagePixelCount(from),
                                       rowBytes: from * MemoryLayout<Float>.size)
                var db = vImage_Buffer(data: d.baseAddress, height: vImagePixelCount(to), width: vImagePixelCount(to),
                                       rowBytes: to * MemoryLayout<Float>.size)
                _ = vImageScale_PlanarF(&sb, &db, nil, vImage_Flags(kvImageHighQualityResampling))
            }
        }
        return dst
    }

    private static func renormalize(_ n: inout [[Float]]) {
        for i in 0..<n[0].count {
            let len = max(sqrt(n[0][i] * n[0][i] + n[1][i] * n[1][i] + n[2][i] * n[2][i]), 1e-6)
            n[0][i] /= len; n[1][i] /= len; n[2][i] /= len
        }
    }

    private static func writePNG(_ planes: [[Float]], side: Int, to url: URL) throws {
        let channels = planes.count == 1 ? 1 : 3
        var bytes = [UInt8](repeating: 0, count: side * side * channels)
        for i in 0..<(side * side) {
            for c in 0..<channels {
                bytes[i * channels + c] = UInt8((min(max(planes[c][i], 0), 1) * 255).rounded())
            }
        }
        let space = channels == 1 ? CGColorSpaceCreateDeviceGray() : CGColorSpace(name: CGColorSpace.sRGB)!
        guard let provider = CGDataProvider(data: Data(bytes) as CFData),
              let image = CGImage(width: side, height: side, bitsPerComponent: 8, bitsPerPixel: 8 * channels,
                                  bytesPerRow: side * channels, space: space, bitmapInfo: CGBitmapInfo(rawValue: 0),
                                  provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent),
              let dest = CGImageDestinationCreateWithURL(url as CFURL, UTType.png.identifier as CFString, 1, nil)
        else { throw PBRError.badOutput("cannot encode \(url.lastPathComponent)") }
        CGImageDestinationAddImage(dest, image, nil)
        guard CGImageDestinationFinalize(dest) else { throw PBRError.badOutput("cannot write \(url.path)") }
    }
}
