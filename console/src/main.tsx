// The console's shell: navigation, theme, the sign-in gate and the page for the current route.

import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { getToken, setToken } from './api';
import { navigate, useRoute } from './router';
import { SignIn } from './pages/SignIn';
import { RunsPage } from './pages/Runs';
import { RunPage } from './pages/Run';
import { ComparePage } from './pages/Compare';
import { DatasetsPage } from './pages/Datasets';
import { DatasetPage } from './pages/Dataset';
import { NewRunPage } from './pages/NewRun';
import { WorkersPage } from './pages/Workers';
import './styles.css';

type Theme = 'dark' | 'light';
const THEME_KEY = 'mpl.theme';

function initialTheme(): Theme {
  const saved = localStorage.getItem(THEME_KEY);
  if (saved === 'dark' || saved === 'light') return saved;
  return matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark';
}

const NAV = [
  { to: '/runs', label: 'Runs' },
  { to: '/new-run', label: 'New run' },
  { to: '/datasets', label: 'Datasets' },
  { to: '/workers', label: 'Workers & queue' },
];

function Nav(props: { current: string; theme: Theme; onTheme: () => void }) {
  const signOut = () => {
    setToken(null);
    navigate('/signin');
  };
  return (
    <header class="topbar">
      <a class="brand" href="#/runs">
        MPL <span>console</span>
      </a>
      <nav aria-label="Main">
        <ul>
          {NAV.map((item) => (
            <li key={item.to}>
              <a
                href={`#${item.to}`}
                aria-current={props.current === item.to.slice(1) ? 'page' : undefined}
              >
                {item.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <div class="topbar-actions">
        <a href="/api-docs" target="_blank" rel="noreferrer">
          API docs
        </a>
        <button type="button" class="ghost" onClick={props.onTheme} aria-label="Toggle theme">
          {props.theme === 'dark' ? 'Light theme' : 'Dark theme'}
        </button>
        <button type="button" class="ghost" onClick={signOut}>
          Sign out
        </button>
      </div>
    </header>
  );
}

function Page() {
  const route = useRoute();
  const [head, id] = route.path;
  if (head === 'signin' || !getToken()) return <SignIn next={route.params.get('next')} />;
  switch (head) {
    case 'runs':
      return id ? <RunPage id={id} /> : <RunsPage />;
    case 'compare':
      return <ComparePage ids={(route.params.get('ids') ?? '').split(',').filter(Boolean)} />;
    case 'datasets':
      return id ? <DatasetPage id={id} /> : <DatasetsPage />;
    case 'new-run':
      return <NewRunPage />;
    case 'workers':
      return <WorkersPage />;
    default:
      return <RunsPage />;
  }
}

function App() {
  const route = useRoute();
  const [theme, setTheme] = useState<Theme>(initialTheme);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  const toggle = () => {
    const next = theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem(THEME_KEY, next);
    setTheme(next);
  };
  const signedIn = getToken() !== null && route.path[0] !== 'signin';
  return (
    <>
      <a class="skip-link" href="#main" onClick={skipToMain}>
        Skip to content
      </a>
      {signedIn && <Nav current={route.path[0] ?? 'runs'} theme={theme} onTheme={toggle} />}
      <main id="main" tabIndex={-1}>
        <Page />
      </main>
    </>
  );
}

/** The skip link moves focus without touching the hash, which is the router's. */
function skipToMain(e: Event) {
  e.preventDefault();
  document.getElementById('main')?.focus();
}

const root = document.getElementById('app');
if (root) render(<App />, root);
