import js from '@eslint/js'
import globals from 'globals'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'data/', '.scratch/', 'bench/results/', 'test/artifacts/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      'no-restricted-imports': ['error', {
        patterns: [{ group: ['../bridges/*', '../api/*', '../bin/*'], message: 'gateway/ and config/ never import bridges/, api/ or bin/' }]
      }]
    }
  },
  {
    files: ['bridges/**', 'api/**', 'bin/**', 'test/**', 'bench/**'],
    rules: { 'no-restricted-imports': 'off' }
  },
  {
    // The console runs in the browser.
    files: ['console/**'],
    languageOptions: { globals: globals.browser }
  },
  {
    // Tests read untyped JSON bodies.
    files: ['test/**'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' }
  }
)
