// Server-sent events over fetch(): EventSource cannot send an Authorization header.
// Parses the text/event-stream format (https://html.spec.whatwg.org/#event-stream-interpretation).

/** Yield {id, event, data} for each event of a fetch Response body. Comments are skipped. */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [], id = null, event = "message";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an unfinished line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { id, event, data: data.join("\n") };
          data = []; event = "message";
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "id") id = text;
        else if (field === "event") event = text;
      }
    }
  } finally {
    reader.releaseLock?.();
  }
}
