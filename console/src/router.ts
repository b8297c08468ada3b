// Hash routing: `#/runs`, `#/runs/<id>`, `#/compare?ids=a,b`. Hash routes need nothing from the
// server beyond `index.html`, and a reload keeps the page.

import { useEffect, useState } from 'preact/hooks';

/** The current route: path segments and query parameters. */
export interface Route {
  path: string[];
  params: URLSearchParams;
}

function parse(hash: string): Route {
  const raw = hash.replace(/^#/, '') || '/runs';
  const [pathPart, queryPart = ''] = raw.split('?', 2);
  return {
    path: pathPart.split('/').filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(queryPart),
  };
}

/** Re-renders on every hash change and returns the parsed route. */
export function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parse(location.hash));
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}

/** Moves to another page. */
export function navigate(to: string): void {
  location.hash = to.startsWith('#') ? to : `#${to}`;
}
