// The /call page: fetch a token from the sidecar with the user's API key, join the room
// with livekit-client, publish the microphone, play the agent, and show its state (the
// agent's `lk.agent.state` attribute) and the live transcript (livekit's
// `lk.transcription` text streams). Every failure is shown, in words, in #status.
import { Room, RoomEvent } from "livekit-client";

const $ = (id) => document.getElementById(id);
let room = null;

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

async function fetchToken(key, agentId) {
  let resp;
  try {
    resp = await fetch("/v1/tokens", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-API-Key": key },
      body: JSON.stringify({ agent_id: agentId }),
    });
  } catch (err) {
    throw new Error(`Cannot reach the sidecar (${err.message}).`);
  }
  if (resp.status === 401 || resp.status === 403) {
    throw new Error("The API key was refused: check it, or ask an admin for one.");
  }
  if (resp.status === 404) throw new Error(`There is no agent ${agentId} in your organisation.`);
  if (!resp.ok) {
    let detail = "";
    try { detail = (await resp.json()).detail || ""; } catch (_) { /* not JSON */ }
    throw new Error(`The sidecar could not give a token (${resp.status}) ${detail}`.trim());
  }
  return resp.json();
}

function addLine(id, role, text) {
  let item = document.querySelector(`#transcript li[data-id="${CSS.escape(id)}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.id = id;
    item.dataset.role = role;
    $("transcript").appendChild(item);
  }
  item.textContent = text;
}

function watch(r) {
  r.on(RoomEvent.ParticipantAttributesChanged, (_changed, participant) => {
    const state = participant.attributes["lk.agent.state"];
    if (state) $("agent-state").textContent = state;
  });
  r.on(RoomEvent.TrackSubscribed, (track) => {
    if (track.kind === "audio") document.body.appendChild(track.attach());
  });
  r.on(RoomEvent.Disconnected, () => {
    status("The call ended.", "idle");
    $("agent-state").textContent = "not in the call";
    $("hangup").hidden = true;
    $("call").disabled = false;
  });
  r.registerTextStreamHandler("lk.transcription", async (reader, who) => {
    const role = who.identity === r.localParticipant.identity ? "you" : "agent";
    const id = reader.info.attributes?.["lk.segment_id"] || reader.info.id;
    let text = "";
    for await (const chunk of reader) {
      text += chunk;
      addLine(id, role, text);
    }
  });
}

async function start(event) {
  event.preventDefault();
  $("call").disabled = true;
  status("Asking the sidecar for a token…", "working");
  let grant;
  try {
    grant = await fetchToken($("key").value, Number($("agent").value));
  } catch (err) {
    status(err.message, "error");
    $("call").disabled = false;
    return;
  }
  status(`Connecting to ${grant.url}…`, "working");
  room = new Room();
  watch(room);
  try {
    await room.connect(grant.url, grant.token, { maxRetries: 0 });
  } catch (err) {
    status(`Cannot reach the LiveKit server at ${grant.url}: ${err.message}`, "error");
    room = null;
    $("call").disabled = false;
    return;
  }
  status(`Connected to room ${grant.room}. Speak when the agent greets you.`, "connected");
  $("hangup").hidden = false;
  try {
    await room.localParticipant.setMicrophoneEnabled(true);
  } catch (err) {
    status(`Connected, but the microphone is not available: ${err.message}`, "error");
  }
}

$("start").addEventListener("submit", start);
$("hangup").addEventListener("click", () => room && room.disconnect());
