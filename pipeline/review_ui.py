"""The review app's one page (list view at /, clip view at /clip/<id>): plain HTML and JavaScript, no build step,
no CDN. Every filter lives in the URL, so a view can be saved or shared; the server does the filtering and paging.
Text from manifests is only ever set through textContent (never innerHTML)."""

PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>actcurate review</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#263238;color:#fff;padding:.5em 1em;display:flex;gap:1em;align-items:center}
header a{color:#fff}header input{width:9em}
main{padding:1em}
form#filters{display:flex;flex-wrap:wrap;gap:.6em;align-items:end;margin-bottom:.6em}
form#filters label{display:flex;flex-direction:column;font-size:12px;color:#555}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}
tr.row:hover{background:#f5f5f5;cursor:pointer}
.accepted{color:#2e7d32}.rejected{color:#e08e00}.error{color:#c62828}
.chip{display:inline-block;background:#eceff1;border-radius:10px;padding:1px 8px;margin:2px;font-size:12px}
.muted{color:#777;font-size:12px}
#clipview{display:grid;grid-template-columns:minmax(320px,1fr) minmax(320px,1fr);gap:1em}
video{width:100%;background:#000;max-height:60vh}
.frames{display:flex;flex-wrap:wrap;gap:6px}.frames canvas{width:220px;border:1px solid #ccc}
.side{display:grid;grid-template-columns:1fr 1fr;gap:.6em}
.box{border:1px solid #ddd;border-radius:6px;padding:.5em;font-size:13px;white-space:pre-wrap;overflow-wrap:anywhere}
.box h4{margin:0 0 .3em;font-size:12px;color:#555}
#reasons{display:none;border:2px solid #e08e00;padding:.5em;border-radius:6px}
#reasons.on{display:block}
#msg{font-weight:bold}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 4px;font-size:11px}
textarea{width:100%;min-height:5em}
</style></head>
<body>
<header><b>actcurate review</b><a href="/" id="home">clips</a>
<label>reviewer <input id="reviewer"></label><span id="tokstate" class="muted"></span><span id="msg"></span></header>
<main id="main"></main>
<script>
"use strict";
const $ = (sel, el=document) => el.querySelector(sel);
function el(tag, attrs={}, ...kids){const e=document.createElement(tag);for(const[k,v]of Object.entries(attrs)){if(k==="text")e.textContent=v;else if(k.startsWith("on"))e.addEventListener(k.slice(2),v);else e.setAttribute(k,v)}for(const k of kids)e.append(k);return e}
const fmt = v => v===null||v===undefined ? "" : (typeof v==="number" ? (Number.isInteger(v)?String(v):v.toPrecision(4)) : String(v));

// token from the start-up URL, kept in this browser and removed from the address bar
(function(){const p=new URLSearchParams(location.search);if(p.has("token")){localStorage.setItem("actcurate-token",p.get("token"));p.delete("token");history.replaceState(null,"",location.pathname+(p.toString()?"?"+p:""))}})();
const token = () => localStorage.getItem("actcurate-token")||"";
const rv = $("#reviewer"); rv.value = localStorage.getItem("actcurate-reviewer")||"reviewer";
rv.addEventListener("change",()=>localStorage.setItem("actcurate-reviewer",rv.value.trim()));
$("#tokstate").textContent = token() ? "write token set" : "read-only (open the URL printed at start-up to write)";
function say(t){$("#msg").textContent=t}
async function api(path){const r=await fetch(path);const j=await r.json();if(!r.ok)throw new Error(j.error||r.status);return j}

let META=null;
async function meta(){return META||(META=await api("/api/meta"))}

// ---------------------------------------------------------------- list view
const FILTER_KEYS=["status","stage","rule","q","review","video","sort","order","limit"];
function currentParams(){return new URLSearchParams(location.search)}
function select(name,options,value){const s=el("select",{name});for(const o of options){const op=el("option",{value:o,text:o||"any"});if(o===value)op.selected=true;s.append(op)}return s}

async function listView(){
  const m=await meta(), p=currentParams(), main=$("#main"); main.replaceChildren();
  const f=el("form",{id:"filters"});
  f.append(el("label",{},"status",select("status",["",...m.statuses],p.get("status")||"")),
    el("label",{},"stage",select("stage",["",...m.stages],p.get("stage")||"")),
    el("label",{},"rule / error",select("rule",["",...m.rules],p.get("rule")||"")),
    el("label",{},"review",select("review",["","accept","reject","none","disputed"],p.get("review")||"")),
    el("label",{},"text in captions",el("input",{name:"q",value:p.get("q")||""})),
    el("label",{},"score",select("rcol",m.score_columns,p.get("rcol")||m.score_columns[0]||"")),
    el("label",{},"min",el("input",{name:"rmin",size:6})),el("label",{},"max",el("input",{name:"rmax",size:6})),
    el("label",{},"sort",select("sort",m.sort_columns,p.get("sort")||"clip_id")),
    el("label",{},"order",select("order",["asc","desc"],p.get("order")||"asc")),
    el("button",{type:"submit",id:"apply",text:"apply"}));
  const chips=el("div");
  for(const[k,v]of p.entries()){if(/^(min|max)\./.test(k)){chips.append(el("span",{class:"chip"},`${k} = ${v} `,el("a",{href:"#",text:"×",onclick:e=>{e.preventDefault();const q=currentParams();q.delete(k);go("/?"+q)}})))}}
  f.addEventListener("submit",e=>{e.preventDefault();const q=new URLSearchParams();const fd=new FormData(f);
    for(const k of ["status","stage","rule","review","q","sort","order"]){const v=(fd.get(k)||"").trim();if(v)q.set(k,v)}
    for(const[k,v]of currentParams().entries())if(/^(min|max)\./.test(k))q.set(k,v);
    const c=fd.get("rcol");if(fd.get("rmin"))q.set("min."+c,fd.get("rmin"));if(fd.get("rmax"))q.set("max."+c,fd.get("rmax"));
    go("/?"+q)});
  const queues=el("div",{},el("span",{class:"muted",text:"review queues: "}));
  for(const kind of ["random","stratified","disputed","overlap"])queues.append(el("button",{text:kind,"data-queue":kind,onclick:()=>loadQueue(kind)})," ");
  const hist=el("div",{id:"hist"}), info=el("div",{id:"info",class:"muted"}), tbl=el("table",{id:"clips"}), more=el("button",{id:"more",text:"next page"});
  main.append(f,chips,queues,hist,info,tbl,more);
  let cursor=null, shown=[];
  const sort=p.get("sort")||"clip_id";
  const head=el("tr");for(const h of ["clip","span (s)","status","stage / rule","value",sort,"review"])head.append(el("th",{text:h}));tbl.append(head);
  async function page(){
    const q=currentParams();if(cursor)q.set("after",JSON.stringify(cursor));q.set("limit",q.get("limit")||"50");
    const r=await api("/api/clips?"+q);cursor=r.next;
    for(const row of r.rows){shown.push(row.clip_id);
      const tr=el("tr",{class:"row","data-clip":row.clip_id,onclick:()=>openClip(row.clip_id,shown)});
      tr.append(el("td",{text:row.video_uri.split("/").pop()+" #"+row.clip_id.slice(-19)}),el("td",{text:`${fmt(row.start_s)}–${fmt(row.end_s)}`}),
        el("td",{class:row.status,text:row.status}),el("td",{text:[row.reject_stage,row.reject_rule||row.error_type].filter(Boolean).join(" / ")}),
        el("td",{text:fmt(row.reject_value)}),el("td",{text:fmt(row[sort])}),el("td",{text:(row.review_verdict||"")+(row.review_dispute?" (disputed)":"")}));
      tbl.append(tr)}
    info.textContent=`${r.total} clips match; showing ${shown.length}`;more.style.display=cursor?"":"none"}
  more.addEventListener("click",page);
  await page();
  const hcol=m.score_columns.includes(sort)?sort:(p.get("rcol")||m.score_columns[0]);
  if(hcol){const q=currentParams();q.set("col",hcol);drawHist(hist,await api("/api/hist?"+q),m.thresholds[hcol]||[])}
  const rs=await api("/api/reviews"), ag=el("div",{id:"agreement",class:"muted"});
  ag.textContent=`reviews: ${rs.records} records on ${rs.clips_reviewed} clips by ${rs.reviewers.length} reviewer(s), ${rs.disputed} disputed`+
    rs.agreement.map(a=>`; ${a.reviewers.join("/")}: ${a.clips} shared, agreement ${fmt(a.agreement)}, kappa ${fmt(a.kappa)}`).join("");
  hist.after(ag);
  async function loadQueue(kind){const q=currentParams();q.set("kind",kind);q.set("n","50");q.set("col",hcol||"");q.set("seed",String(Date.now()%100000));
    const r=await api("/api/queue?"+q);if(!r.clip_ids.length){say("queue empty");return}
    sessionStorage.setItem("actcurate-nav",JSON.stringify(r.clip_ids));say(`${kind} queue: ${r.clip_ids.length} clips`);openClip(r.clip_ids[0],r.clip_ids)}
}
function drawHist(box,h,thresholds){const W=520,H=110,n=h.counts.length,peak=Math.max(1,...h.counts);const ns="http://www.w3.org/2000/svg";
  const svg=document.createElementNS(ns,"svg");svg.setAttribute("width",W);svg.setAttribute("height",H+18);svg.id="histsvg";
  h.counts.forEach((c,i)=>{const r=document.createElementNS(ns,"rect");const bh=H*c/peak;r.setAttribute("x",i*W/n+1);r.setAttribute("y",H-bh);r.setAttribute("width",W/n-2);r.setAttribute("height",bh);r.setAttribute("fill","#1565c0");
    const t=document.createElementNS(ns,"title");t.textContent=`[${fmt(h.edges[i])}, ${fmt(h.edges[i+1])}): ${c}`;r.append(t);svg.append(r)});
  const lo=h.edges[0],hi=h.edges[n];
  for(const t of thresholds){if(t.value<lo||t.value>hi)continue;const x=W*(t.value-lo)/(hi-lo),ln=document.createElementNS(ns,"line");
    for(const[k,v]of Object.entries({x1:x,x2:x,y1:0,y2:H,stroke:"#c62828","stroke-width":2,"stroke-dasharray":"4 2",class:"threshold"}))ln.setAttribute(k,v);
    const tt=document.createElementNS(ns,"title");tt.textContent=`${t.stage}.${t.param} = ${t.value}`;ln.append(tt);svg.append(ln)}
  const lab=document.createElementNS(ns,"text");lab.setAttribute("y",H+14);lab.setAttribute("font-size","11");lab.textContent=`${h.column}: ${fmt(h.edges[0])} … ${fmt(h.edges[n])} (${h.count} values)`;svg.append(lab);
  box.replaceChildren(svg)}
function go(url){history.pushState(null,"",url);route()}
function openClip(id,nav){sessionStorage.setItem("actcurate-nav",JSON.stringify(nav||[id]));sessionStorage.setItem("actcurate-list",location.search);go("/clip/"+encodeURIComponent(id))}

// ---------------------------------------------------------------- clip view
let keyHandler=null;
async function clipView(id){
  const m=await meta(), c=await api("/api/clip/"+encodeURIComponent(id)), row=c.row, main=$("#main");main.replaceChildren();
  const nav=JSON.parse(sessionStorage.getItem("actcurate-nav")||"[]"), pos=nav.indexOf(id);
  const start=row.start_s||0, end=row.end_s;
  const video=el("video",{id:"player",controls:"",muted:"",preload:"auto",src:"/video/"+encodeURIComponent(row.video_id)});
  video.muted=true;
  video.addEventListener("loadedmetadata",()=>{video.currentTime=start;video.play().catch(()=>{})});
  // stop on the clip's last frame (end_s is often the next scene's first frame)
  video.addEventListener("timeupdate",()=>{if(end!==null&&video.currentTime>=end-0.03){video.pause();video.currentTime=Math.max(start,end-0.04)}});
  video.addEventListener("play",()=>{if(end!==null&&video.currentTime>=end-0.05)video.currentTime=start});
  const status=el("div",{},el("b",{class:row.status,text:row.status}),` ${[row.reject_stage,row.reject_rule||row.error_type].filter(Boolean).join(" / ")} `,
    el("span",{class:"muted",text:row.reject_value!==null?`value ${fmt(row.reject_value)} vs ${fmt(row.reject_threshold)}`:(row.error_message||"")}));
  const left=el("div",{},el("div",{class:"muted",text:`${row.video_uri}  ${fmt(start)}–${fmt(end)} s  (${pos+1}/${nav.length})`}),video,status,
    el("h3",{text:"keyframes"}),el("div",{class:"frames",id:"frames"}));
  // captions and MoME side by side; a reviewer's caption edit shown above the pipeline's
  const caps=el("div",{class:"box",id:"captions"},el("h4",{text:"captions"}));
  if(c.caption_edit)caps.append(el("div",{class:"chip",text:`edited v${c.caption_edit.caption_version} by ${c.caption_edit.reviewer}`}),el("div",{id:"edited",text:c.caption_edit.caption}));
  for(const k of c.caption_columns)caps.append(el("h4",{text:k}),el("div",{text:typeof row[k]==="string"?row[k]:JSON.stringify(row[k],null,1)}));
  if(!c.caption_columns.length&&!c.caption_edit)caps.append(el("div",{class:"muted",text:"no caption columns in this run"}));
  const mome=el("div",{class:"box",id:"mome"},el("h4",{text:"MoME verification"}));
  for(const k of c.mome_columns)mome.append(el("h4",{text:k}),el("div",{text:typeof row[k]==="string"?row[k]:JSON.stringify(row[k],null,1)}));
  if(!c.mome_columns.length)mome.append(el("div",{class:"muted",text:"no MoME columns in this run"}));
  const scores=el("table",{});for(const k of m.score_columns)if(row[k]!==undefined&&row[k]!==null)scores.append(el("tr",{},el("td",{text:k}),el("td",{text:fmt(row[k])})));
  const hist=el("div",{class:"box",id:"history"},el("h4",{text:"reviews"}));
  for(const r of c.reviews)hist.append(el("div",{class:"review",text:`${r.time}  ${r.reviewer}: ${r.verdict}${r.reason?" ("+r.reason+")":""}${r.caption?" “"+r.caption+"”":""}`}));
  const reasons=el("div",{id:"reasons"},el("b",{text:"reject: pick a reason "}));
  m.reasons.forEach((r,i)=>reasons.append(el("span",{class:"chip"},el("kbd",{text:String(i+1)})," "+r)));
  const edit=el("div",{id:"editbox",style:"display:none"},el("textarea",{id:"captext"}),el("div",{class:"muted",text:"Ctrl+Enter saves, Esc cancels"}));
  const help=el("div",{class:"muted"},el("kbd",{text:"a"})," accept ",el("kbd",{text:"r"})," reject ",el("kbd",{text:"e"})," edit caption ",el("kbd",{text:"j"}),"/",el("kbd",{text:"k"})," next/previous ",el("kbd",{text:"space"})," play ",el("kbd",{text:"b"})," back to list");
  const right=el("div",{},help,reasons,edit,el("div",{class:"side"},caps,mome),el("h3",{text:"scores"}),scores,hist);
  main.append(el("div",{id:"clipview"},left,right));
  drawFrames(row,id);
  const capVersion=c.caption_edit?c.caption_edit.caption_version:0;
  const capColumn=c.caption_columns[0]||null;
  async function verdict(v,extra={}){
    const body={clip_id:id,reviewer:rv.value.trim(),verdict:v,caption_version:capVersion,caption_column:capColumn,...extra};
    const r=await fetch("/api/reviews",{method:"POST",headers:{"Content-Type":"application/json","X-Review-Token":token()},body:JSON.stringify(body)});
    const j=await r.json();if(!r.ok){say("not saved: "+(j.error||r.status));return false}
    say(`saved: ${v}${extra.reason?" ("+extra.reason+")":""}`);
    hist.append(el("div",{class:"review",text:`now  ${body.reviewer}: ${v}${extra.reason?" ("+extra.reason+")":""}${extra.caption?" “"+extra.caption+"”":""}`}));return true}
  let mode=null;
  keyHandler=async e=>{
    if(mode==="edit"){if(e.key==="Escape"){mode=null;edit.style.display="none"}else if(e.key==="Enter"&&(e.ctrlKey||e.metaKey)){e.preventDefault();const t=$("#captext").value.trim();if(t&&await verdict("caption",{caption:t,caption_version:capVersion+1})){mode=null;edit.style.display="none"}}return}
    if(e.target.tagName==="INPUT"||e.target.tagName==="TEXTAREA")return;
    if(mode==="reason"){const i=parseInt(e.key,10);if(i>=1&&i<=m.reasons.length){mode=null;reasons.classList.remove("on");await verdict("reject",{reason:m.reasons[i-1]})}else if(e.key==="Escape"){mode=null;reasons.classList.remove("on")}return}
    if(e.key==="a")await verdict("accept");
    else if(e.key==="r"){mode="reason";reasons.classList.add("on")}
    else if(e.key==="e"){mode="edit";edit.style.display="";const t=$("#captext");t.value=c.caption_edit?c.caption_edit.caption:(capColumn&&typeof row[capColumn]==="string"?row[capColumn]:"");t.focus();e.preventDefault()}
    else if(e.key==="j"||e.key==="n"){if(pos+1<nav.length)go("/clip/"+encodeURIComponent(nav[pos+1]))}
    else if(e.key==="k"||e.key==="p"){if(pos>0)go("/clip/"+encodeURIComponent(nav[pos-1]))}
    else if(e.key===" "){e.preventDefault();video.paused?video.play():video.pause()}
    else if(e.key==="b")go("/"+(sessionStorage.getItem("actcurate-list")||""))};
}
function nearest(times,t,tol){let best=-1,d=tol;(times||[]).forEach((x,i)=>{if(Math.abs(x-t)<=d){d=Math.abs(x-t);best=i}});return best}
function drawFrames(row,id){
  const box=$("#frames");let times=row.pose_keyframe_times&&row.pose_keyframe_times.length?row.pose_keyframe_times:null;
  if(!times&&row.ocr_frame_times){times=row.ocr_frame_times.filter((t,i)=>(row.ocr_frame_boxes||[])[i]&&row.ocr_frame_boxes[i].length).slice(0,4)}
  if(!times||!times.length){const s=row.start_s||0,e=row.end_s===null?s+1:row.end_s;times=[s,(s+e)/2,Math.max(s,e-0.05)]}
  for(const t of times.slice(0,6)){
    const cv=el("canvas",{"data-t":String(t)}),img=new Image();box.append(cv);
    img.onload=()=>{cv.width=img.width;cv.height=img.height;const g=cv.getContext("2d");g.drawImage(img,0,0);const W=img.width,H=img.height;
      const rec=(row.pose_record||[]).find(r=>Math.abs(r.time_s-t)<0.06);
      for(const p of (rec&&rec.persons)||[]){g.strokeStyle="#00e676";g.lineWidth=2;if(p.box)g.strokeRect(p.box[0]*W,p.box[1]*H,(p.box[2]-p.box[0])*W,(p.box[3]-p.box[1])*H);
        g.fillStyle="#ffeb3b";for(const k of p.keypoints||[]){if(k.length>2&&k[2]<0.5)continue;g.beginPath();g.arc(k[0]*W,k[1]*H,3,0,7);g.fill()}}
      const oi=nearest(row.ocr_frame_times,t,0.13);
      for(const b of oi>=0?(row.ocr_frame_boxes[oi]||[]):[]){g.strokeStyle="#ff1744";g.lineWidth=2;g.strokeRect(b[0]*W,b[1]*H,(b[2]-b[0])*W,(b[3]-b[1])*H)}
      g.fillStyle="rgba(0,0,0,.6)";g.fillRect(0,0,70,18);g.fillStyle="#fff";g.font="12px sans-serif";g.fillText(fmt(t)+" s",4,13)};
    img.src=`/frame/${encodeURIComponent(id)}?t=${t}`}}

document.addEventListener("keydown",e=>{if(keyHandler)keyHandler(e)});
window.addEventListener("popstate",route);
async function route(){keyHandler=null;say("");try{
  if(location.pathname.startsWith("/clip/"))await clipView(decodeURIComponent(location.pathname.slice(6)));else await listView();
  document.body.dataset.ready="1"}catch(err){say("error: "+err.message)}}
route();
</script></body></html>
"""
