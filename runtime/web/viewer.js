// The material previewer: a sphere and a swatch under a moving point light and a room environment.
// Bundled with three.js into one script that preview.html inlines, so the page opens offline by double-click.
// It reads the material from <script id="material" type="application/json">; with #still in the URL the light
// stands still (what `pbrforge preview --screenshot` captures).
import * as THREE from "three";
import { RoomEnvironment } from "three/addons/environments/RoomEnvironment.js";

const NO_WEBGL = "This preview needs WebGL, which this browser does not offer or has turned off.";
const STILL_ANGLE = -0.6; // radians around the scene: the light stands front-left, above
const data = JSON.parse(document.getElementById("material").textContent);
const still = location.hash === "#still";
const status = document.getElementById("status");

function webglRenderer(canvas) {
  try {
    const probe = document.createElement("canvas");
    if (!(probe.getContext("webgl2") || probe.getContext("webgl"))) return null;
    return new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  } catch (e) {
    return null;
  }
}

function loadTexture(uri, colorSpace) {
  return new Promise((resolve, reject) => {
    new THREE.TextureLoader().load(
      uri,
      (t) => {
        t.colorSpace = colorSpace;
        t.wrapS = t.wrapT = THREE.RepeatWrapping;
        t.anisotropy = 4;
        resolve(t);
      },
      undefined,
      reject,
    );
  });
}

async function main() {
  const canvas = document.getElementById("view");
  const renderer = webglRenderer(canvas);
  if (!renderer) {
    status.textContent = NO_WEBGL;
    document.body.dataset.state = "no-webgl";
    return;
  }
  renderer.setPixelRatio(still ? 1 : window.devicePixelRatio);
  // exposure then a clip per channel: a metal highlight keeps its tint (curved tone mappers whiten it)
  renderer.toneMapping = THREE.LinearToneMapping;
  renderer.outputColorSpace = THREE.SRGBColorSpace;

  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x202124);
  const pmrem = new THREE.PMREMGenerator(renderer);
  scene.environment = pmrem.fromScene(new RoomEnvironment(), 0.04).texture;
  scene.environmentIntensity = 0.35;

  const [albedo, packed, normal] = await Promise.all([
    loadTexture(data.textures.albedo, THREE.SRGBColorSpace),
    loadTexture(data.textures.metallic_roughness, THREE.NoColorSpace),
    loadTexture(data.textures.normal, THREE.NoColorSpace),
  ]);
  // three.js reads roughness from G and metalness from B: glTF's packed texture serves both maps
  const maps = { albedo: ["map", albedo], roughness: ["roughnessMap", packed], metallic: ["metalnessMap", packed], normal: ["normalMap", normal] };
  const material = new THREE.MeshStandardMaterial({ roughness: 1, metalness: 1 });
  const fallback = { map: ["color", 0xbbbbbb], roughnessMap: ["roughness", 0.5], metalnessMap: ["metalness", 0] };
  function setMap(name, on) {
    const [slot, texture] = maps[name];
    material[slot] = on ? texture : null;
    if (fallback[slot]) {
      const [field, value] = fallback[slot];
      if (field === "color") material.color.set(on ? 0xffffff : value);
      else material[field] = on ? 1 : value;
    }
    material.needsUpdate = true;
  }
  for (const name of Object.keys(maps)) setMap(name, true);

  const sphere = new THREE.Mesh(new THREE.SphereGeometry(0.5, 128, 64), material);
  sphere.position.set(-0.6, 0, 0);
  const swatch = new THREE.Mesh(new THREE.PlaneGeometry(1, 1), material);
  swatch.position.set(0.6, 0, 0);
  swatch.rotation.x = -0.45; // tipped back, so it catches the light
  scene.add(sphere, swatch);

  const light = new THREE.PointLight(0xffffff, 4, 0, 2);
  scene.add(light);
  const camera = new THREE.PerspectiveCamera(35, 1, 0.1, 100);
  camera.position.set(0, 0.15, 3.2);
  camera.lookAt(0, 0, 0);

  const controls = document.getElementById("controls");
  const angle = controls.querySelector("#angle");
  const exposure = controls.querySelector("#exposure");
  const orbit = controls.querySelector("#orbit");
  orbit.checked = !still;
  angle.value = STILL_ANGLE;
  angle.addEventListener("input", () => (orbit.checked = false));
  for (const box of controls.querySelectorAll("input[data-map]")) {
    box.addEventListener("change", () => setMap(box.dataset.map, box.checked));
  }

  function resize() {
    const { clientWidth: w, clientHeight: h } = canvas;
    renderer.setSize(w, h, false);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
  }
  function frame(t) {
    if (orbit.checked) angle.value = (((t / 4000) % (2 * Math.PI)) - Math.PI).toFixed(3);
    const a = Number(angle.value);
    light.position.set(2.2 * Math.sin(a), 1.4, 2.2 * Math.cos(a));
    renderer.toneMappingExposure = Number(exposure.value);
    renderer.render(scene, camera);
  }
  resize();
  window.addEventListener("resize", resize);
  renderer.setAnimationLoop(frame); // in still mode too: a screenshot shows the frame once it is presented
  document.body.dataset.state = "drawn";
}

main().catch((e) => {
  status.textContent = `The preview failed: ${e}`;
  document.body.dataset.state = "failed";
});
