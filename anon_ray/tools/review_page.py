"""The review page served by tools/review_server.py: one HTML document, no external resources.

Left, the queue (riskiest first), a page at a time. Right, the selected asset's masked frame with its boxes drawn
over it, a frame scrubber, and the corrections so far. Drag on the frame to add a box for the
frames in "from"/"to" (one frame by default); click a box to suppress it (its whole track when
it has one). Every change is saved at once; "Approve" re-renders the asset with them.
"""

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>anon-ray review</title>
<style>
body{font-family:sans-serif;margin:0;display:flex;height:100vh}
#side{width:20em;overflow:auto;border-right:1px solid #ccc;padding:.5em}
#side button{display:block;width:100%;text-align:left;margin:2px 0}
#side button[hidden]{display:none}
#main{padding:.5em;flex:1;overflow:auto}
#stage{position:relative;display:inline-block}
#stage img,#stage canvas{position:absolute;left:0;top:0}
#scrub{width:100%}
.reviewed{color:#080}
</style></head><body>
<div id="side"><h3>Review queue</h3><div id="count"></div><ul id="queue" style="list-style:none;padding:0"></ul>
  <button id="more" hidden>more</button></div>
<div id="main">
  <div><b id="name">pick an asset</b> <span id="label"></span></div>
  <div id="stage"><img id="frame" alt=""><canvas id="canvas"></canvas></div>
  <div><input type="range" id="scrub" min="0" max="0" value="0"></div>
  <div>new boxes on frames <input id="from" type="number" min="0" size="5"> to
       <input id="to" type="number" min="0" size="5"> (empty: the current frame)
       as <select id="cls"><option>region</option><option>face</option><option>plate</option></select>
       <button id="approve" disabled>Approve and re-render</button> <span id="status"></span></div>
  <pre id="doc"></pre>
</div>
<script>
let asset = null, doc = null, shown = [], drag = null;
const $ = (id) => document.getElementById(id);
const q = (p) => "path=" + encodeURIComponent(asset.relpath) + (p === undefined ? "" : "&i=" + p);

// The queue comes a page at a time (an archive's has a million outputs): "more" appends the
// next page; after an approval the pages shown so far are read again.
let listed = 0;
async function loadQueue(more) {
  const offset = more ? listed : 0, limit = more || !listed ? "" : "&limit=" + listed;
  const page = await (await fetch("/api/queue?offset=" + offset + limit)).json();
  if (!more) $("queue").innerHTML = "";
  for (const a of page.items) {
    const li = document.createElement("li"), b = document.createElement("button");
    b.dataset.path = a.relpath;
    b.textContent = a.risk.toFixed(1) + "  " + a.relpath + (a.reviewed ? "  (reviewed)" : "");
    if (a.reviewed) b.className = "reviewed";
    b.onclick = () => open(a);
    li.appendChild(b); $("queue").appendChild(li);
  }
  listed = offset + page.items.length;
  $("count").textContent = listed + " of " + page.total + " shown, " + page.reviewed + " reviewed";
  $("more").hidden = listed >= page.total;
}
$("more").onclick = () => loadQueue(true);

async function open(a) {
  asset = a;
  $("name").textContent = a.relpath;
  $("scrub").max = Math.max(0, a.frames - 1); $("scrub").value = 0;
  doc = await (await fetch("/api/overrides?" + q())).json();
  doc.add = doc.add || []; doc.suppress = doc.suppress || [];
  $("approve").disabled = false; $("status").textContent = "";
  await show();
}

async function show() {
  const i = +$("scrub").value;
  $("label").textContent = "frame " + i + " of " + asset.frames;
  $("doc").textContent = JSON.stringify(doc, null, 1);
  const img = $("frame");
  await new Promise((ok) => { img.onload = ok; img.src = "/api/frame?" + q(i) + "&t=" + Date.now(); });
  const c = $("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
  $("stage").style.width = c.width + "px"; $("stage").style.height = c.height + "px";
  const r = await fetch("/api/boxes?" + q(i));
  shown = r.ok ? await r.json() : [];
  draw();
  document.body.dataset.frame = i;  // for tests: the frame whose boxes are drawn
}

function draw(extra) {
  const c = $("canvas"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height); g.lineWidth = 2;
  for (const s of shown) {
    g.strokeStyle = s.added ? "#08f" : "#f00";
    g.strokeRect(s.box[0], s.box[1], s.box[2] - s.box[0], s.box[3] - s.box[1]);
  }
  if (extra) { g.strokeStyle = "#0f0"; g.strokeRect(extra[0], extra[1], extra[2] - extra[0], extra[3] - extra[1]); }
}

async function save() {
  const r = await fetch("/api/overrides?" + q(), {method: "POST", body: JSON.stringify(doc)});
  $("status").textContent = r.ok ? "saved" : "not saved: " + (await r.json()).error;
  await show();
}

function at(e) { const b = $("canvas").getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; }
$("canvas").onmousedown = (e) => { drag = at(e); };
$("canvas").onmousemove = (e) => { if (drag) { const p = at(e); draw(box(drag, p)); } };
$("canvas").onmouseup = async (e) => {
  const p = at(e), start = drag; drag = null;
  if (!asset || !start) return;
  const i = +$("scrub").value, b = box(start, p);
  if (b[2] - b[0] > 3 && b[3] - b[1] > 3) {
    const from = $("from").value === "" ? i : +$("from").value, to = $("to").value === "" ? i : +$("to").value;
    doc.add.push({box: b, frames: [from, Math.max(from, to)], cls: $("cls").value});
  } else {
    const hit = shown.find((s) => p[0] >= s.box[0] && p[0] <= s.box[2] && p[1] >= s.box[1] && p[1] <= s.box[3]);
    if (!hit || hit.added) return;
    doc.suppress.push(hit.track >= 0 ? {track: hit.track} : {frame: i, box: hit.box});
  }
  await save();
};
function box(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(Math.round);
}

$("scrub").oninput = () => show();
$("approve").onclick = async () => {
  $("status").textContent = "re-rendering...";
  const r = await (await fetch("/api/approve?" + q(), {method: "POST"})).json();
  await loadQueue(); await show();
  $("status").textContent = r.status + (r.error ? ": " + r.error : "");
};
loadQueue();
</script></body></html>
"""
