// {{name}}: a Gust function in JavaScript. It answers every request with a
// greeting, taken from the GREETING variable ([env] in gust.toml, or
// `gust config set {{name}} GREETING=...`), and the path it was called on.
//
// Build and deploy: `gust deploy` here; while editing: `gust dev`.
// Variables come from wasi:cli/environment: read them inside the handler
// (code at the top level runs when the component is built).

import { getEnvironment } from 'wasi:cli/environment@0.2.10';

addEventListener('fetch', (event) => {
  const env = Object.fromEntries(getEnvironment());
  const greeting = env.GREETING ?? 'Hello';
  const url = new URL(event.request.url);
  event.respondWith(
    new Response(`${greeting} from {{name}}! You asked for ${url.pathname}${url.search}\n`, {
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    }),
  );
});
