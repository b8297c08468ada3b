// Sign in: paste an API token. It is checked against the API before it is kept.

import { useState } from 'preact/hooks';
import { ApiError, setToken } from '../api';
import { navigate } from '../router';

/** The sign-in page; `next` is where to go afterwards. */
export function SignIn(props: { next: string | null }) {
  const [token, setValue] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const secret = token.trim();
    if (!secret) {
      setError('Paste an API token first.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const res = await fetch('/v1/runs?limit=1', {
        headers: { Authorization: `Bearer ${secret}` },
      });
      if (res.status === 401) throw new ApiError(401, 'This token is not valid', '');
      if (!res.ok)
        throw new ApiError(res.status, 'The API answered an error', `HTTP ${res.status}`);
      setToken(secret);
      navigate(props.next && !props.next.startsWith('/signin') ? props.next : '/runs');
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="signin">
      <form class="card" onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to the MPL console</h1>
        <p class="muted">
          Paste an API token. The admin token is the one given to the server in
          <code> MPL_ADMIN_TOKEN</code>; an admin can create more with
          <code> POST /v1/tokens</code>. The token stays in this browser's local storage.
        </p>
        <label for="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autoComplete="current-password"
          value={token}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          aria-invalid={error ? 'true' : undefined}
          aria-describedby={error ? 'token-error' : undefined}
          autoFocus
        />
        {error && (
          <p id="token-error" class="field-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
      </form>
    </div>
  );
}
